"""Training-throughput variants of `sida bench train`, compiled side by side, timed one at a time.

torch.compile of the three DDPM++ networks takes ~200 s, most of it single-threaded, and one GPU call
lasts at most 10 minutes. So every variant gets its own process: all compile at once (CPU), then the
parent lets them onto the GPU one after another, nothing else running, for the timed iterations.

    python -m bench.train_variants OUT NAME VARIANT[,VARIANT...] [--deadline S] [--profile VARIANT,...]

A variant is a `bench.train_throughput.CONFIGS` name, optionally followed by inductor options on top of
`train.launch.INDUCTOR_OPTIONS`: `bf16-compile+conv_1x1_as_mm=0` turns that one off, `+key` sets key = True. Rows go to
OUT/<device>/<date>-NAME.json (the `sida bench train` format); profiled variants also write
OUT/profile-VARIANT.txt (top kernels, GPU-busy share of the wall time) and a gzipped Chrome trace.
"""

import argparse
import gzip
import json
import multiprocessing as mp
import os
import queue
import shutil
import sys
import time
from pathlib import Path


def parse(variant):
    config, *options = variant.split('+')
    return config, {key: value.lower() not in ('0', 'false', 'no', 'off') for key, _, value in (o.partition('=') for o in options)}


def profile(d, out, variant, iterations=2):
    import torch
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(iterations):
            d.iteration()
        sync()
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in averages if e.device_type == torch.autograd.DeviceType.CUDA)
    launches = sum(e.count for e in averages if e.device_type == torch.autograd.DeviceType.CUDA)
    head = (f'{variant}: {iterations} iterations in {1e3 * wall:.1f} ms wall (profiler on); GPU kernels {gpu_us / 1e3:.1f} ms '
            f'= {100 * gpu_us / 1e6 / wall:.1f}% busy; {launches // iterations} kernels per iteration\n')
    table = averages.table(sort_by='self_device_time_total', row_limit=40, max_name_column_width=90)
    (out / f'profile-{variant}.txt').write_text(head + table + '\n')
    trace = out / f'trace-{variant}.json'
    prof.export_chrome_trace(str(trace))
    with open(trace, 'rb') as src, gzip.open(f'{trace}.gz', 'wb') as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    print(head, flush=True)


def child(variant, network, device, flops, peak, batch, iters, out, profiled, events, go):
    from bench.train_throughput import measure
    from train import launch
    config, options = parse(variant)
    launch.INDUCTOR_OPTIONS.update(options)      # prepare() applies them when it compiles

    def ready(d):
        events.put(('warm', variant, None))
        go.wait()
        if profiled:
            profile(d, out, variant)
    try:
        row = measure(config, network, batch, iters, device, 3, flops, peak, ready=ready)
        row.update(backend=variant, config=config, inductor_options=dict(launch.INDUCTOR_OPTIONS) if row['compile'] else {})
        events.put(('row', variant, row))
    except Exception as e:      # recorded as the variant's row, like `sida bench train` does
        events.put(('row', variant, {'kind': 'train', 'backend': variant, 'batch': batch, 'device': device,
                                     'error': f'{type(e).__name__}: {e}'[:1000]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('out', type=Path)
    ap.add_argument('name')
    ap.add_argument('variants')
    ap.add_argument('--deadline', type=float, default=420, help='seconds after start by which a variant must be compiled')
    ap.add_argument('--profile', default='', help='variants to profile before timing')
    ap.add_argument('--start-timing-after', type=float, default=0, help='seconds after start (leave the GPU to another job)')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--iters', type=int, default=10)
    ap.add_argument('--network', default='ddpmpp-cifar10')
    ap.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto', help='auto: cuda when present, else cpu')
    a = ap.parse_args()
    start = time.monotonic()
    import torch

    from bench.flops import peak_for
    from sida.cli_options import resolve_device
    a.device = resolve_device(a.device)
    from bench.record import machine, write_result
    from bench.train_throughput import CONFIGS, NETWORKS, count_iteration_flops, train_settings
    variants = a.variants.split(',')
    for v in variants:
        if parse(v)[0] not in CONFIGS:
            ap.error(f'unknown configuration in {v!r}')
    if len(set(variants)) < len(variants):
        ap.error('a variant is listed twice')
    gpu = a.device.startswith('cuda')
    info = machine(gpu)
    peak, peak_source = peak_for(info, gpu, None)
    methods = {CONFIGS[parse(v)[0]][0] for v in variants}       # every method is held to its own work
    flops = {m: count_iteration_flops(NETWORKS[a.network][0](), m, a.batch, a.device) for m in sorted(methods)}
    if gpu:
        torch.cuda.empty_cache()
    a.out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context('spawn')
    events = ctx.Queue()
    gos = {v: ctx.Event() for v in variants}
    procs = {v: ctx.Process(target=child,           # not daemonic: inductor's compile workers are its children
                            args=(v, a.network, a.device, flops[CONFIGS[parse(v)[0]][0]], peak, a.batch, a.iters, a.out,
                                  v in a.profile.split(','), events, gos[v]))
             for v in variants}
    for p in procs.values():
        p.start()
    warm, rows = [], {}
    while len(warm) + len(rows) < len(variants) and time.monotonic() - start < a.deadline:
        try:
            kind, v, row = events.get(timeout=5)
        except queue.Empty:
            continue
        (warm.append(v) if kind == 'warm' else rows.__setitem__(v, row))
        print(f'[{time.monotonic() - start:6.0f} s] {v}: {kind}', flush=True)
    for v, p in procs.items():      # too slow to compile within the call: recorded, not waited for
        if v not in warm and v not in rows:
            p.kill()
            rows[v] = {'kind': 'train', 'backend': v, 'batch': a.batch, 'device': a.device,
                       'error': f'not compiled within {a.deadline:.0f} s (killed)'}
    while time.monotonic() - start < a.start_timing_after:
        time.sleep(1)
    for v in [w for w in warm if w not in rows]:      # one at a time on an otherwise idle GPU
        gos[v].set()
        turn, quiet = time.monotonic(), 0
        while v not in rows:
            try:
                kind, w, row = events.get(timeout=5)
                if kind == 'row' and w not in rows:      # late 'warm' news of a killed variant is not a row
                    rows[w] = row
            except queue.Empty:
                quiet += not procs[v].is_alive()         # one more quiet wait after it exits: its row may be in transit
                if quiet > 1 or time.monotonic() - turn > 150:
                    procs[v].kill()
                    rows[v] = {'kind': 'train', 'backend': v, 'batch': a.batch, 'device': a.device,
                               'error': 'died or hung while timed'}
        r = rows[v]
        print(f'[{time.monotonic() - start:6.0f} s] {v}: ' + (r.get('error') or
              f'{r["images_per_s"]:.1f} img/s, {r["p50_ms"]:.1f} ms, '
              f'{(r["peak_gpu_memory_mib"] or 0) / 1024:.1f} GiB, warm-up {r["warmup_s"]:.0f} s'),
              flush=True)
    for p in procs.values():
        p.join(timeout=30)
        if p.is_alive():        # stuck after its row: do not let it hold the exit
            p.kill()
    settings = {**train_settings(a.network, a.batch, a.iters, 3, variants, a.device, peak, peak_source),
                'harness': 'bench/train_variants.py: compiled in parallel processes, timed one at a time'}
    path = write_result(a.out, info, a.name, settings, [rows[v] for v in variants])
    print(f'wrote {path}', flush=True)
    json.dump({v: rows[v] for v in variants}, sys.stdout, indent=1, default=str)


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    main()
