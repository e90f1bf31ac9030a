"""Serving throughput against GPUs, from `sida bench http` results of one server started on 1, 2, ... GPUs
(bench/scale_serve.sh makes them): per model and GPU count, the saturation throughput (the best closed-loop level),
the p99 latency of the open-loop rate nearest 80% of it, and the speed-up over the 1-GPU server with its targets
(>= 1.8x at 2 GPUs, >= 6.5x at 8, p99 no worse than on one GPU)."""

import json
from pathlib import Path

TARGETS = {2: 1.8, 8: 6.5}      # speed-up over one GPU ([scale-serve])
LOAD = 0.8                      # p99 is compared at this fraction of each setup's own saturation


def read_http(path):
    """(settings, rows) of one `sida bench http` result file."""
    data = json.loads(Path(path).read_text())
    if not any(r.get('kind', '').startswith('http') for r in data.get('results', [])):
        raise ValueError(f'{path}: not a `sida bench http` result')
    return data['settings'], data['results']


def gpus_of(settings):
    """GPUs the server answered from: the devices in its /metrics (recorded by bench http), else 1."""
    return max(1, len(settings.get('server_devices') or []))


def serve_scaling_rows(paths):
    """One row per (model, GPUs, label: the server's layout), results of several files (closed loop in one, open loop in another) merged."""
    groups = {}
    for path in paths:
        settings, rows = read_http(path)
        key = (settings['model'], gpus_of(settings), settings.get('label') or '')
        group = groups.setdefault(key, {'files': [], 'closed': [], 'open': [], 'n': settings['n'],
                                        'backend': settings.get('server_backend')})
        group['files'].append(str(path))
        group['closed'] += [r for r in rows if r['kind'] == 'http' and r.get('ok')]
        group['open'] += [r for r in rows if r['kind'] == 'http-open-loop' and r.get('ok')]
    out = []
    for (model, gpus, layout), g in sorted(groups.items()):
        if not g['closed']:
            continue
        best = max(g['closed'], key=lambda r: r['images_per_s'])
        row = {'kind': 'serve-scaling', 'model': model, 'gpus': gpus, 'layout': layout, 'backend': g['backend'], 'n': g['n'],
               'images_per_s': best['images_per_s'], 'saturation_images_per_s': best['images_per_s'],
               'saturation_concurrency': best['concurrency'], 'saturation_p99_ms': best.get('p99_ms'), 'files': g['files']}
        target = LOAD * best['images_per_s']
        near = min(g['open'], key=lambda r: abs(r['offered_rps'] * r['n'] - target), default=None)
        if near is not None:
            row.update(load_offered_images_per_s=near['offered_rps'] * near['n'], load_fraction=near['offered_rps'] * near['n']
                       / best['images_per_s'], load_p99_ms=near.get('p99_ms'), load_errors=near.get('error_count'))
        out.append(row)
    for row in out:
        base = next((r for r in out if r['model'] == row['model'] and r['gpus'] == 1 and r['layout'] == row['layout']), None)
        row['speedup'] = row['saturation_images_per_s'] / base['saturation_images_per_s'] if base else None
        row['target_speedup'] = TARGETS.get(row['gpus'])
        row['speedup_met'] = (row['speedup'] >= row['target_speedup']) if row['speedup'] and row['target_speedup'] else None
        if base and row.get('load_p99_ms') is not None and base.get('load_p99_ms') is not None:
            row['load_p99_vs_one_gpu'] = row['load_p99_ms'] / base['load_p99_ms']
    return out
