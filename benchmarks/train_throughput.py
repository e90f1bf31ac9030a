"""Distillation throughput: generator images/s (one fake-score update + one generator update per batch).

Runs the real `Distiller` on EDM's CIFAR-10 DDPM++ configuration (55.7M parameters, random weights:
speed does not depend on them) at a fixed per-GPU batch, for several precision/compile settings.
Writes benchmarks/results/<device>/<date>-train-throughput.json and a PNG bar chart.

    python benchmarks/train_throughput.py --batch 128 --iters 20 --out benchmarks/results
"""

import argparse
import copy
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.architecture import build_denoiser, ddpmpp  # noqa: E402
from train.batches import LabelBatches  # noqa: E402
from train.distill import Batch, DistillConfig, Distiller  # noqa: E402
from train.launch import configure_backends, prepare  # noqa: E402

PEAK_BF16 = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


class RandomImages:
    """SiDA's real batch without the I/O: random images with uniform labels (speed only)."""

    def __init__(self, batch, device):
        self.inner, self.batch, self.device, self.draws = LabelBatches(10, batch, 0, 0, 1, device), batch, device, 0

    def next(self):
        self.draws += 1
        cond = self.inner.next().cond
        return Batch(torch.rand(self.batch, 3, 32, 32, device=self.device) * 2 - 1, cond)


def measure(name, method, precision, compile_, channels_last, batch, iters, device):
    configure_backends(tf32=precision == 'tf32')
    torch.manual_seed(0)
    teacher = build_denoiser(ddpmpp(label_dim=10))
    nets = [prepare(copy.deepcopy(teacher), device, channels_last, compile_) for _ in range(3)]
    cfg = DistillConfig(method=method, batch=batch, g_warmup_images=0, gan_start_images=0)
    batches = RandomImages(batch, device) if method != 'sid' else LabelBatches(10, batch, 0, 0, 1, device)
    autocast = torch.bfloat16 if precision == 'bf16' else None
    d = Distiller(cfg, nets[0], nets[1].requires_grad_(True), nets[2].requires_grad_(True), batches, (3, 32, 32),
                  device=device, autocast_dtype=autocast)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(3):
        d.iteration()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        d.iteration()
    flops = counter.get_total_flops()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        d.iteration()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    per_iter = sum(times) / len(times)
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    row = {'kind': 'train', 'backend': name, 'method': method, 'precision': precision, 'compile': compile_,
           'channels_last': channels_last, 'batch': batch, 'images_per_s': batch / per_iter,
           'p50_ms': 1000 * times[len(times) // 2], 'p99_ms': 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
           'peak_memory_gib': torch.cuda.max_memory_allocated() / 2 ** 30, 'warmup_s': warmup_s,
           'flops_per_iteration': flops, 'mfu_vs_bf16_peak': (flops / per_iter / peak) if peak else None}
    del d, nets, teacher
    torch.cuda.empty_cache()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--iters', type=int, default=20)
    ap.add_argument('--out', default='benchmarks/results')
    ap.add_argument('--configs', default='fp32,tf32,bf16,bf16-compile,bf16-compile-cl,sida-bf16-compile')
    args = ap.parse_args()
    device = 'cuda'
    table = {
        'fp32': ('sid', 'fp32', False, False), 'tf32': ('sid', 'tf32', False, False), 'bf16': ('sid', 'bf16', False, False),
        'bf16-compile': ('sid', 'bf16', True, False), 'bf16-compile-cl': ('sid', 'bf16', True, True),
        'sida-bf16-compile': ('sida', 'bf16', True, False),
    }
    rows = []
    for name in args.configs.split(','):
        try:
            row = measure(name, *table[name], args.batch, args.iters, device)
        except Exception as e:   # keep measuring the others; the failure is recorded, not hidden
            row = {'kind': 'train', 'backend': name, 'batch': args.batch, 'error': f'{type(e).__name__}: {e}'[:500]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    gpu = torch.cuda.get_device_name()
    device_name = gpu.replace(' ', '-')
    date = datetime.date.today().isoformat()
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip() or None
    except OSError:
        commit = None
    query = ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader']
    driver = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    result = {'device': gpu, 'driver': driver, 'torch': torch.__version__, 'commit': commit, 'date': date,
              'settings': {'network': 'EDM DDPM++ CIFAR-10 cond. (55.7M params)', 'per_gpu_batch': args.batch,
                           'timed_iterations': args.iters,
                           'reference': 'authors\' SiD trainer on this machine kind: 335 img/s fp16 (24.5 GB), 235 img/s fp32'},
              'results': rows}
    out = Path(args.out) / device_name
    out.mkdir(parents=True, exist_ok=True)
    (out / f'{date}-train-throughput.json').write_text(json.dumps(result, indent=2) + '\n')
    plot(rows, out / f'{date}-train-throughput.png', gpu)


def plot(rows, path, gpu):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ok = [r for r in rows if 'images_per_s' in r]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([r['backend'] for r in ok], [r['images_per_s'] for r in ok], color='tab:blue')
    ax.axhline(335, color='tab:red', ls='--', lw=1, label='reference SiD trainer, fp16 (335 img/s)')
    ax.axhline(500, color='tab:green', ls=':', lw=1, label='target (500 img/s)')
    for i, r in enumerate(ok):
        ax.text(i, r['images_per_s'], f"{r['images_per_s']:.0f}\n{r['peak_memory_gib']:.0f} GiB", ha='center', va='bottom', fontsize=7)
    ax.set_ylabel('generator images / s')
    ax.set_title(f'SiD distillation throughput, DDPM++ CIFAR-10, batch {ok[0]["batch"] if ok else "?"}, {gpu}', fontsize=9)
    ax.legend(fontsize=7, loc='upper left')
    plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == '__main__':
    main()
