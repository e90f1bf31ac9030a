"""Running a trainer to completion: progress, logs, plots, samples, checkpoints, resume and SIGTERM.

Works with any trainer exposing iteration() -> stats, images_seen, modules(), optimizers(),
progress()/load_progress() and rng (its torch.Generator): the distiller and the teacher trainer.
Rank 0 writes; every rank checkpoints nothing but participates in the same iterations.

Run directory:
  config.json       the resolved configuration
  log.jsonl         one JSON object per log interval (images seen, losses, img/s, metrics)
  tb/               TensorBoard events (when tensorboard is installed)
  samples/          PNG grids from fixed seeds, one per sample interval
  plots/losses.png  loss and metric curves, refreshed at every log interval
  checkpoints/      atomic checkpoints (last N + best), each one also a loadable bundle
  bundle/           the final EMA generator (or teacher) as a bundle
"""

import dataclasses
import json
import math
import signal
import time
from pathlib import Path

import torch

from train import checkpoint as ckpt


@dataclasses.dataclass
class RunConfig:
    run_dir: str
    total_images: int
    log_every_images: int = 10_000
    checkpoint_every_images: int = 500_000
    sample_every_images: int = 200_000
    metric_every_images: int = 0          # 0 = no metric during training
    keep_checkpoints: int = 3
    resume: str | None = None             # None | 'auto' | a checkpoint directory
    time_limit_s: float = 0               # > 0: finish (checkpoint + bundle) once this much wall time has passed


class StopRequested:
    """SIGTERM / SIGINT ask the loop to checkpoint and exit at the end of the current iteration."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:          # not the main thread: no handlers, nothing to restore
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunLog:
    def __init__(self, run_dir, enabled):
        self.dir, self.enabled, self.rows = Path(run_dir), enabled, []
        self.tb = None
        if enabled:
            (self.dir / 'plots').mkdir(parents=True, exist_ok=True)
            log = self.dir / 'log.jsonl'
            if log.exists():
                self.rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.dir / 'tb'))
            except ImportError:
                self.tb = None

    def write(self, row):
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r['images_seen'] < row['images_seen']] + [row]   # drop rows a resume replays
        with open(self.dir / 'log.jsonl', 'a') as f:
            f.write(json.dumps(row) + '\n')
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != 'images_seen':
                    self.tb.add_scalar(key, value, row['images_seen'])
            self.tb.flush()
        self.plot()

    def plot(self):
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        keys = sorted({k for r in self.rows for k, v in r.items()
                       if isinstance(v, (int, float)) and (k.startswith('loss') or k.startswith('metric'))})
        if not keys:
            return
        fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), squeeze=False)
        for ax, key in zip(axes[0], keys):
            pts = [(r['images_seen'], r[key]) for r in self.rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if pts:
                ax.plot(*zip(*pts), lw=1)
            ax.set_title(key)
            ax.set_xlabel('images seen')
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.dir / 'plots' / 'losses.png', dpi=80)
        plt.close(fig)

    def close(self):
        if self.tb is not None:
            self.tb.close()


def agreed(flag):
    """Under DDP every rank must stop at the same iteration: any rank's signal stops them all."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0],
                     device='cuda' if torch.distributed.get_backend() == 'nccl' else 'cpu')
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(stats):
    """Under DDP: each statistic averaged over the ranks (each rank's is the mean over its slice of the same global
    batch, so this is the global batch's mean, as one process would log it); unchanged otherwise."""
    if not stats or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return stats
    keys = sorted(stats)
    t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64,
                     device='cuda' if torch.distributed.get_backend() == 'nccl' else 'cpu')
    torch.distributed.all_reduce(t)
    return dict(zip(keys, (t / torch.distributed.get_world_size()).tolist()))


def peak_gpu_mib():
    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if torch.cuda.is_initialized() else None


def _crossed(before, after, every):
    return every > 0 and before // every != after // every


def save(trainer, run_cfg, write_bundle, best=None):
    def contents(tmp):
        write_bundle(tmp)
        for name, module in trainer.modules().items():
            ckpt.save_module(tmp / 'state' / f'{name}.safetensors', module)
        for name, opt in trainer.optimizers().items():
            ckpt.save_optimizer(tmp / 'state' / f'{name}.safetensors', opt)
        from safetensors.torch import save_file
        save_file(ckpt.rng_state({'loop': trainer.rng}), str(tmp / 'state' / 'rng.safetensors'))
        (tmp / 'state' / 'progress.json').write_text(json.dumps({**trainer.progress(), 'best': best}, indent=2))
    keep = [best['checkpoint']] if best else []
    return ckpt.write_checkpoint(run_cfg.run_dir, trainer.images_seen, contents, run_cfg.keep_checkpoints, keep)


def restore(trainer, path, log=print):
    from safetensors.torch import load_file
    path = Path(path)
    for name, module in trainer.modules().items():
        ckpt.load_module(path / 'state' / f'{name}.safetensors', module)
    for name, opt in trainer.optimizers().items():
        ignored = ckpt.load_optimizer(path / 'state' / f'{name}.safetensors', opt,
                                      scheduled=getattr(trainer, 'scheduled_hyperparameters', ()))
        if ignored:     # a resumed run is the checkpointed run: say so where the command line asked for something else
            log(f'resume: {name} as checkpointed, this command line\'s settings ignored: {", ".join(ignored)}')
    progress = json.loads((path / 'state' / 'progress.json').read_text())
    trainer.load_progress(progress)
    ckpt.set_rng_state(load_file(str(path / 'state' / 'rng.safetensors')), {'loop': trainer.rng})
    return progress.get('best')


def resolve_resume(run_cfg):
    if run_cfg.resume is None:
        return None
    if run_cfg.resume == 'auto':
        return ckpt.find_latest(run_cfg.run_dir)
    path = Path(run_cfg.resume)
    if not (path / 'state' / 'progress.json').is_file():
        raise FileNotFoundError(f'{path}: not a complete checkpoint (no state/progress.json)')
    return path


def run(trainer, run_cfg, write_bundle, make_samples=None, metric=None, rank=0, log=print):
    """Train until total_images; returns the final checkpoint path (rank 0) or None.

    write_bundle(dir): writes the EMA generator (or teacher) as a bundle into dir.
    make_samples(path): writes a PNG grid from fixed seeds.  metric(): {'metric_...': value}, lower is better.
    """
    from tqdm import tqdm
    run_dir = Path(run_cfg.run_dir)
    writer = rank == 0
    best = None
    start_from = resolve_resume(run_cfg)
    if start_from is not None:
        best = restore(trainer, start_from, log)
        log(f'resumed from {start_from} at {trainer.images_seen:,} images')
    runlog = RunLog(run_dir, writer)
    if writer:
        (run_dir / 'samples').mkdir(parents=True, exist_ok=True)
    window = {'stats': {}, 'count': 0, 'time': time.perf_counter(), 'images': trainer.images_seen}
    last_checkpoint = None
    bar = tqdm(total=run_cfg.total_images, initial=trainer.images_seen, unit='img', unit_scale=True,
               disable=not writer, desc='train', dynamic_ncols=True, mininterval=1)
    if writer and metric is not None and trainer.images_seen == 0:
        runlog.write({'images_seen': 0, **metric()})     # the curve starts at the initial generator
    started = time.perf_counter()
    out_of_time = False
    with StopRequested() as stop:
        while trainer.images_seen < run_cfg.total_images and not out_of_time:
            before = trainer.images_seen
            stats = trainer.iteration()
            after = trainer.images_seen
            bar.update(after - before)
            for k, v in stats.items():
                window['stats'][k] = window['stats'].get(k, 0.0) + v
            window['count'] += 1
            # A time limit ends the run like reaching --images does; every rank must agree on when.
            out_of_time = run_cfg.time_limit_s > 0 and agreed(time.perf_counter() - started > run_cfg.time_limit_s)
            done = after >= run_cfg.total_images or out_of_time
            stop_now = agreed(stop.requested)
            metric_due = _crossed(before, after, run_cfg.metric_every_images) or done
            measure = metric is not None and metric_due
            log_due = _crossed(before, after, run_cfg.log_every_images) or done or metric_due    # the same on every rank
            means = mean_over_ranks({k: v / window['count'] for k, v in window['stats'].items()}) if log_due else {}
            if writer and log_due:
                elapsed = time.perf_counter() - window['time']
                row = {'images_seen': after, 'images_per_s': (after - window['images']) / max(elapsed, 1e-9), **means}
                if peak_gpu_mib() is not None:
                    row['peak_gpu_mib'] = peak_gpu_mib()
                if measure:
                    row.update(metric())
                    key = next((k for k in row if k.startswith('metric')), None)
                    value = row.get(key) if key else None
                    if value is not None and math.isfinite(value) and (best is None or value < best['value']):
                        best = {'value': value, 'metric': key, 'checkpoint': ckpt.checkpoint_name(after), 'pending': True}
                runlog.write(row)
                bar.set_postfix({k: f'{v:.3g}' for k, v in row.items() if k != 'images_seen'}, refresh=False)
            if log_due:         # every rank starts a new window (its means go into the next row's all-reduce)
                window = {'stats': {}, 'count': 0, 'time': time.perf_counter(), 'images': after}
            if writer and make_samples is not None and (_crossed(before, after, run_cfg.sample_every_images) or done):
                make_samples(run_dir / 'samples' / f'{after:012d}.png')
            if writer and (_crossed(before, after, run_cfg.checkpoint_every_images) or done or stop_now
                           or (best or {}).get('pending')):
                if best:
                    best.pop('pending', None)
                last_checkpoint = save(trainer, run_cfg, write_bundle, best)
            if stop_now:
                log(f'stopping on signal at {after:,} images; checkpoint {last_checkpoint}')
                break
    bar.close()
    if out_of_time:
        log(f'time limit of {run_cfg.time_limit_s:.0f}s reached at {trainer.images_seen:,} images')
    if writer and (trainer.images_seen >= run_cfg.total_images or out_of_time):
        write_bundle(run_dir / 'bundle')
        if best:
            import shutil
            shutil.copytree(run_dir / 'checkpoints' / best['checkpoint'], run_dir / 'best', dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns('state'))
    runlog.close()
    return last_checkpoint
