"""CPU milliseconds per request of one `sida serve` process's threads, on a CPU (a reproducible stand-in for the
event loop's cost on a GPU host, where that loop, not the GPU, limits one process).

The server runs on core 0 (OMP_NUM_THREADS=1); its backend thread and the load generator on core 1, so the main
thread (event loop) has a core to itself. Per round: a fresh server, then `sida bench http` closed loop at each --n;
the main thread's CPU ticks (/proc/PID/task/TID/stat, utime + stime) around each run, divided by the generate
requests the server counted (/metrics). Prints one line per run and the spread.

    python -m bench.serve_cpu --bundle /tmp/hp/tiny --rounds 3 --n 1,16 [--env SIDA_HTTP_PARSER=httptools]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.soak import free_port

ROOT = Path(__file__).resolve().parents[1]
HZ = os.sysconf('SC_CLK_TCK')


def ticks(pid, tid):
    fields = Path(f'/proc/{pid}/task/{tid}/stat').read_text().rsplit(')', 1)[1].split()
    return int(fields[11]) + int(fields[12])         # utime, stime (fields 14 and 15 of the whole line)


def generate_requests(url):
    """(generate requests answered, of them not 200) so far."""
    text = urllib.request.urlopen(f'{url}/metrics', timeout=10).read().decode()
    counts = {s: float(c) for s, c in re.findall(r'sida_requests_total\{route="/v1/generate",status="(\d+)"\} (\S+)', text)}
    return sum(counts.values()), sum(c for s, c in counts.items() if s != '200')


def thread_ids(pid):
    """{thread name: native id} from py-spy dump (Python 3.11 gives threads no OS names)."""
    out = subprocess.run([str(Path(sys.executable).parent / 'py-spy'), 'dump', '-p', str(pid)], capture_output=True,
                         text=True).stdout
    return {name: int(tid) for tid, name in re.findall(r'Thread (\d+) \([^)]*\): "([^"]+)"', out)}


def start_server(args, port, log):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT), **dict(e.split('=', 1) for e in args.env)}
    env.setdefault('SIDA_MAX_QUEUE_IMAGES', '1024')      # c=32 at n=16 fits: 200s measured, not 429s
    cmd = ['taskset', '-c', '0', sys.executable, '-m', 'sida.cli', 'serve', '--bundle', args.bundle, '--backend', 'torch',
           '--port', str(port), '--no-ui', '--max-batch', str(args.max_batch)]
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    url = f'http://127.0.0.1:{port}'
    for _ in range(300):
        try:
            urllib.request.urlopen(f'{url}/readyz', timeout=1)
            return server, url
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit('server did not become ready')


def bench(args, url, n):
    cmd = ['taskset', '-c', '1', sys.executable, '-m', 'sida.cli', 'bench', 'http', '--url', url, '--concurrency',
           str(args.concurrency), '--duration', str(args.duration), '--n', str(n), '--format', 'npy', '--response',
           'binary', '--out', args.out, '--name', 'serve-cpu', '--no-plot']
    out = subprocess.run(cmd, env={**os.environ, 'PYTHONPATH': str(ROOT)}, capture_output=True, text=True, check=True)
    out = out.stdout + out.stderr
    return float(re.search(r'([\d.]+) img/s', out).group(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--bundle', required=True)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--n', default='1,16')
    p.add_argument('--concurrency', type=int, default=32)
    p.add_argument('--duration', type=float, default=8)
    p.add_argument('--max-batch', type=int, default=64)
    p.add_argument('--env', action='append', default=[], help='NAME=VALUE for the server, e.g. SIDA_HTTP_PARSER=httptools')
    p.add_argument('--out', default='/tmp/serve-cpu-results')
    p.add_argument('--label', default='')
    args = p.parse_args()
    sizes = [int(x) for x in args.n.split(',')]
    per_n = {n: [] for n in sizes}
    for r in range(args.rounds):
        with open(f'{args.out}.server.log', 'w') as log:
            server, url = start_server(args, free_port(), log)
            try:
                threads = thread_ids(server.pid)
                subprocess.run(['taskset', '-p', '-c', '1', str(threads['sida-backend_0'])], check=True, capture_output=True)
                main_tid, backend_tid = server.pid, threads['sida-backend_0']
                for n in sizes:
                    before = (ticks(server.pid, main_tid), ticks(server.pid, backend_tid), *generate_requests(url))
                    rate = bench(args, url, n)
                    after = (ticks(server.pid, main_tid), ticks(server.pid, backend_tid), *generate_requests(url))
                    requests, refused = after[2] - before[2], after[3] - before[3]
                    ms = [1000 * (a - b) / HZ / requests for a, b in zip(after[:2], before[:2])]
                    per_n[n].append(ms[0])
                    print(json.dumps({'label': args.label, 'round': r, 'n': n, 'requests': int(requests), 'not_200': int(refused),
                                      'img_per_s': rate, 'main_ms_per_req': round(ms[0], 3),
                                      'backend_ms_per_req': round(ms[1], 3)}), flush=True)
            finally:
                server.terminate()
                server.wait(30)
    for n, values in per_n.items():
        print(f'{args.label} n={n}: main thread {statistics.median(values):.3f} ms/request (median of {len(values)}; '
              f'{min(values):.3f}-{max(values):.3f})', flush=True)


if __name__ == '__main__':
    main()
