"""What every result file records (machine, code, date, settings, rows), and how timings become rows."""

import datetime
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

FORMAT = 'sida-bench/1'


def slug(text):
    text = re.sub(r'\((r|tm|c)\)', '', text.lower())
    return re.sub(r'[^a-z0-9]+', '-', text).strip('-')


def cpu_model():
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def gpu_driver():
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return out[0] if out else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine(gpu):
    """The measured device: the first CUDA GPU when `gpu`, else this CPU. `slug` names its results folder."""
    import torch
    cpu = cpu_model()
    info = {'cpu': cpu, 'cpu_cores': cpu_cores(), 'torch': torch.__version__, 'python': platform.python_version(),
            'cuda': torch.version.cuda, 'torch_threads': torch.get_num_threads(),
            'load_average_1m': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None}   # a busy machine measures slow
    if gpu:
        name = torch.cuda.get_device_name()
        return {**info, 'device': name, 'slug': slug(name), 'driver': gpu_driver(),
                'gpu_memory_gib': round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)}
    return {**info, 'device': f'CPU: {cpu} ({info["cpu_cores"]} cores)', 'slug': f'cpu-{info["cpu_cores"]}core-{slug(cpu)}',
            'driver': None}


def git_commit():
    """HEAD of this checkout; SIDA_BENCH_COMMIT names it where the code runs from a copy without .git."""
    if os.environ.get('SIDA_BENCH_COMMIT'):
        return os.environ['SIDA_BENCH_COMMIT']
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=20,
                             cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def percentiles(seconds):
    """Latency summary in milliseconds (linear interpolation between order statistics, like numpy)."""
    import numpy as np
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {'p50_ms': float(p50), 'p90_ms': float(p90), 'p99_ms': float(p99), 'mean_ms': float(ms.mean()),
            'min_ms': float(ms.min()), 'max_ms': float(ms.max())}


def warm_up(call, calls, seconds, sync=lambda: None):
    """At least `calls` calls, going on until `seconds` have passed (GPU clocks and caches settle); returns (seconds, calls)."""
    start, done = time.perf_counter(), 0
    while done < calls or time.perf_counter() - start < seconds:
        call()
        sync()
        done += 1
    return time.perf_counter() - start, done


def time_runs(call, runs, sync=lambda: None, max_seconds=None, min_runs=3):
    """Seconds of `runs` calls, each fenced by `sync` (cuda.synchronize on GPU); stops early past `max_seconds`."""
    times, deadline = [], None if max_seconds is None else time.perf_counter() + max_seconds
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
        if deadline is not None and time.perf_counter() > deadline and len(times) >= min(min_runs, runs):
            break
    return times


def result_path(out, device_slug, name, date, run_id=None):
    """OUT/<device>/<date>-<name>.json, or -2, -3, ... after it when an earlier run of the same name and day holds it:
    a rerun never overwrites another run's rows. The same run (run_id) writing again (a partial file, then the whole
    one) keeps its file."""
    for i in range(1, 10_000):
        path = Path(out) / device_slug / f'{date}-{name}{"" if i == 1 else f"-{i}"}.json'
        if not path.exists() or _run_id_of(path) == run_id:
            return path
    raise RuntimeError(f'{Path(out) / device_slug}: 9,999 runs named {name!r} on {date}; pick another --name')


def _run_id_of(path):
    try:
        return json.loads(path.read_text()).get('run_id')
    except (OSError, ValueError, AttributeError):
        return None                # unreadable: not ours, keep it


def write_result(out, info, name, settings, rows, plot=True):
    """Write the run's JSON (and its plots); returns the JSON path. The first write of a run picks a file no other run
    holds (result_path); the run's later writes replace that one."""
    date = datetime.date.today().isoformat()
    run_id = info.setdefault('run_id', f'{time.time_ns():016x}-{os.getpid()}')   # one per run: `info` travels with it
    result = {'format': FORMAT, 'name': name, 'device': info['device'], 'device_slug': info['slug'], 'driver': info['driver'],
              'torch': info['torch'], 'commit': git_commit(), 'date': date,
              'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), 'run_id': run_id,
              'machine': {k: v for k, v in info.items() if k not in ('device', 'slug', 'driver', 'torch', 'run_id')},
              'settings': settings, 'results': rows}
    path = result_path(out, info['slug'], name, date, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(result, indent=2, default=str) + '\n')
    os.replace(tmp, path)
    if plot:
        from bench.plots import plot_result
        plot_result(path)
    return path


def safe_name(text):
    return slug(str(text)) or 'run'
