"""`sida bench soak`: moderate load on a `sida serve` that this command starts, for minutes, sampling the server's memory.

The server runs as a subprocess on a free loopback port (so its process is known and measured: resident memory
from /proc, and its GPU memory from nvidia-smi when there is a GPU). `concurrency` closed-loop clients post to
/v1/generate the whole time; every `sample_every` seconds one row records the memory and the interval's requests.
Verdict: memory may grow at most `max_growth` (5%) after the warm-up (the first minute): leaks show as a slope.
"""

import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx


def rss_mib(pid):
    """Resident memory of a process (Linux /proc), MiB."""
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'no VmRSS for process {pid}')


def gpu_mib(pid):
    """GPU memory nvidia-smi reports for the process (all GPUs), MiB; None without nvidia-smi or when it uses none."""
    try:
        out = subprocess.run(['nvidia-smi', '--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = [float(mem) for p, mem in (line.split(',') for line in out.strip().splitlines() if ',' in line) if int(p) == pid]
    return sum(used) if used else None


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_server(bundle, backend, port, log_path, extra=()):
    command = [sys.executable, '-m', 'sida.cli', 'serve', '--bundle', str(bundle), '--backend', backend, '--port', str(port),
               '--no-ui', *extra]
    log = open(log_path, 'wb') if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 600             # compile/TensorRT warm-ups take minutes on a GPU
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'sida serve exited with {process.returncode} before it was ready' +
                               (f' (log: {log_path})' if log_path else ''))
        try:
            if httpx.get(f'{url}/readyz', timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError('sida serve was not ready after 600 s')


def verdict(rows, warmup_s, max_growth):
    """Growth of each memory series from its first sample after warm-up to its highest after that."""
    after = [r for r in rows if r['t_s'] >= warmup_s]
    out = {'warmup_s': warmup_s, 'growth_limit': max_growth}
    for key in ('rss_mib', 'gpu_mib'):
        series = [r[key] for r in after if r.get(key) is not None]
        if len(series) >= 2:
            out[f'{key}_after_warmup'] = series[0]
            out[f'{key}_max'] = max(series)
            out[f'{key}_growth'] = (max(series) - series[0]) / series[0]
    growths = [v for k, v in out.items() if k.endswith('_growth')]
    out['passed'] = bool(growths) and max(growths) <= max_growth
    return out


def run_soak(bundle, backend='torch', minutes=10.0, concurrency=8, sample_every=5.0, n=1, warmup_s=60.0, max_growth=0.05,
             log_path=None, log=print):
    # `timeout` stops us with SIGTERM: exit through the finally below, which stops the server too.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    process, url = start_server(bundle, backend, free_port(), log_path)
    rows, codes, ok_images, lock = [], Counter(), [0], threading.Lock()
    stop = threading.Event()
    try:
        info = httpx.get(f'{url}/v1/models', timeout=30).json()['data'][0]
        prompt = {'prompt': 'a photo of a cat'} if info['condition']['kind'] == 'text' else {}

        def client(i):
            with httpx.Client(base_url=url, timeout=60) as c:
                k = 0
                while not stop.is_set():
                    try:
                        r = c.post('/v1/generate', json={'seed': i * 10 ** 9 + k, 'n': n, **prompt})
                        key = str(r.status_code)
                    except httpx.HTTPError as e:
                        key = type(e).__name__
                    with lock:
                        codes[key] += 1
                        ok_images[0] += n if key == '200' else 0
                    k += 1
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
        started = time.monotonic()
        for t in threads:
            t.start()
        end = started + 60 * minutes
        last_codes, last_images, last_t = Counter(), 0, started
        while time.monotonic() < end:
            time.sleep(max(0.0, min(sample_every, end - time.monotonic())))
            now = time.monotonic()
            with lock:
                interval, images = codes - last_codes, ok_images[0] - last_images
                last_codes, last_images = codes.copy(), ok_images[0]
            row = {'kind': 'soak', 'backend': info.get('backend'), 't_s': round(now - started, 1),
                   'rss_mib': round(rss_mib(process.pid), 1), 'gpu_mib': gpu_mib(process.pid),
                   'requests': sum(interval.values()), 'ok': interval.get('200', 0),
                   'errors': {k: v for k, v in interval.items() if k != '200'}, 'images_per_s': images / (now - last_t)}
            last_t = now
            rows.append(row)
            log(f't={row["t_s"]:7.1f}s  RSS {row["rss_mib"]:8.1f} MiB  GPU {row["gpu_mib"] or "-"}  '
                f'{row["images_per_s"]:7.1f} img/s  errors {row["errors"] or 0}')
        stop.set()
        for t in threads:
            t.join(timeout=70)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    result = verdict(rows, warmup_s, max_growth)
    settings = {'model': info['id'], 'server_backend': info.get('backend'), 'server_device': info.get('device'),
                'server_precision': info.get('precision'), 'minutes': minutes, 'concurrency': concurrency, 'n': n,
                'sample_every_s': sample_every, 'requests': sum(codes.values()), 'status_counts': dict(codes),
                'verdict': result}
    return info, settings, rows
