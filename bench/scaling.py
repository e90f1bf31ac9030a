"""`sida bench scaling RUN...`: distillation throughput against the number of GPUs, read from real training runs.

Each RUN is the folder of a `sida train distill` run (under torchrun when it used several GPUs): its config.json says
the world size and the per-GPU batch, its log.jsonl the images/s of every logging window. A run's steady rate is the
median window after the first `skip` ones (those hold the compile and the CUDA-graph recording). Scaling efficiency is
rate_N / (N x rate_1) against the one-GPU run with the same method, per-GPU batch and compile mode.

`loss_agreement(a, b)`: two runs' logged losses window by window (same global batch and seed on N GPUs and on one:
they should agree within bf16 noise; SiDA's discriminator term is averaged per rank, the documented exception).
bench/scale_train.sh makes the runs.
"""

import json
import statistics
from pathlib import Path


def read_run(run_dir, skip=2):
    """One run's row: who it was (method, GPUs, batches, compile) and its steady images/s, per GPU and peak memory."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / 'config.json').read_text())
        lines = [json.loads(line) for line in (run_dir / 'log.jsonl').read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'{run_dir}: not a finished training run folder ({e})') from None
    rates = [row['images_per_s'] for row in lines if 'images_per_s' in row]
    steady = rates[skip:] if len(rates) > skip else []
    if not steady:
        raise ValueError(f'{run_dir}: {len(rates)} logged window(s), none after the first {skip}: run longer or log more often')
    world = int(config.get('world_size', 1))
    per_gpu = int(config.get('per_gpu_batch', 0))
    rate = statistics.median(steady)
    peaks = [row['peak_gpu_mib'] for row in lines if row.get('peak_gpu_mib') is not None]
    return {'kind': 'scaling', 'run': str(run_dir), 'method': (config.get('distill') or {}).get('method'),
            'gpus': world, 'ddp': bool(config.get('ddp', world > 1)), 'per_gpu_batch': per_gpu,
            'global_batch': world * per_gpu, 'compile': config.get('compile'),
            'precision': config.get('precision'), 'device': config.get('device'), 'windows': len(steady),
            'images_per_s': rate, 'images_per_s_per_gpu': rate / world,
            'images_per_s_spread': [min(steady), max(steady)], 'peak_gpu_mib': max(peaks) if peaks else None}


def scaling_rows(run_dirs, skip=2, log=print):
    """(rows, skipped): rows sorted by (method, per-GPU batch, compile, GPUs), each with its efficiency against the
    matching 1-GPU run (under torchrun, i.e. DDP, if there is one); runs that cannot be read are skipped with why."""
    rows, skipped = [], []
    for d in run_dirs:
        try:
            rows.append(read_run(d, skip))
        except ValueError as e:         # a crashed or cut-short run (out of memory at 8 GPUs): the others still count
            skipped.append(str(e))
            log(f'skipped: {e}')
    rows.sort(key=lambda r: (str(r['method']), r['per_gpu_batch'], str(r['compile']), r['gpus'], not r['ddp']))
    for row in rows:
        same = [r for r in rows if r['gpus'] == 1 and (r['method'], r['per_gpu_batch'], r['compile'])
                == (row['method'], row['per_gpu_batch'], row['compile'])]
        base = next((r for r in same if r['ddp']), same[0] if same else None)
        row['speedup'] = row['images_per_s'] / base['images_per_s'] if base else None
        row['efficiency'] = row['speedup'] / row['gpus'] if base else None
    return rows, skipped


def loss_agreement(run_a, run_b):
    """Per loss: the largest and median relative difference between two runs' windows logged at the same image count."""
    def windows(run_dir):
        try:
            rows = [json.loads(line) for line in (Path(run_dir) / 'log.jsonl').read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f'{run_dir}: no readable log.jsonl ({e})') from None
        return {row['images_seen']: row for row in rows if any(k.startswith('loss') for k in row)}
    a, b = windows(run_a), windows(run_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f'{run_a} and {run_b} logged no window at the same image count (same --log-every and batch?)')
    result = {'runs': [str(run_a), str(run_b)], 'windows': len(common), 'images': [common[0], common[-1]]}
    for loss in sorted({k for i in common for k in a[i] if k.startswith('loss')}):
        diffs = [abs(a[i][loss] - b[i][loss]) / max(abs(a[i][loss]), abs(b[i][loss]), 1e-12)
                 for i in common if loss in a[i] and loss in b[i]]
        if diffs:
            result[loss] = {'max_relative_difference': max(diffs), 'median_relative_difference': statistics.median(diffs)}
    return result
