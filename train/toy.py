"""The analytic 2-D toy: a Gaussian-mixture teacher with a closed-form EDM denoiser.

Ground truth is known exactly, so the whole loop (initialisation from the teacher, the 1:1 schedule,
both losses, the sigma distributions, the normaliser, EMA) can be checked on a CPU in seconds:
SiD must move a generator that starts collapsed on the posterior mean onto every mode with the
right weights. The networks are small EDM-preconditioned MLPs run through the very same
`Distiller` as the image models.
"""

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import silu

from models.precond import EDMPrecond, edm_loss_weight
from train.distill import Batch, DistillConfig, Distiller
from train.sid import fake_score_sigma

ANGLES = torch.arange(8) * (2 * math.pi / 8)
MEANS = torch.stack([ANGLES.cos(), ANGLES.sin()], dim=1)
WEIGHTS = torch.tensor([0.30, 0.20, 0.10, 0.10, 0.10, 0.10, 0.05, 0.05])
STD = 0.08


class Mixture:
    def __init__(self, weights=WEIGHTS, means=MEANS, std=STD):
        self.weights, self.means, self.std = weights / weights.sum(), means, std

    def sample(self, n, generator=None):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.std * torch.randn(n, 2, generator=generator)

    def denoise(self, x, sigma):
        """Exact posterior mean E[x0 | x] of the mixture under x = x0 + sigma * n."""
        s2 = (sigma.reshape(-1, 1) ** 2).float()
        var = self.std ** 2 + s2                                         # [B,1]
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)           # [B,K]
        logits = self.weights.log()[None] - d2 / (2 * var) - torch.log(var)
        r = logits.softmax(dim=1)
        shrink = self.std ** 2 / var                                     # [B,1]
        posterior = self.means[None] + shrink[:, :, None] * (x[:, None, :] - self.means[None])
        return (r[:, :, None] * posterior).sum(1)


class ExactDenoiser(torch.nn.Module):
    label_dim = 0

    def __init__(self, mixture):
        super().__init__()
        self.mixture = mixture

    def forward(self, x, sigma, **cond):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0])
        return self.mixture.denoise(x.float(), sigma)


class ToyMLP(torch.nn.Module):
    """A raw network F with the UNets' interface. 'Encoder' = the first two hidden layers (SiDA's
    discriminator reads their output), 'decoder' = one hidden layer and the output layer."""

    def __init__(self, width=128, freqs=16):
        super().__init__()
        self.register_buffer('freqs', torch.arange(1, freqs + 1).float())
        self.enc0 = torch.nn.Linear(2 + 2 * freqs, width)
        self.enc1 = torch.nn.Linear(width, width)
        self.dec0 = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, 2)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None, text_embeds=None, output='denoised'):
        f = noise_labels[:, None] * self.freqs[None]
        h = silu(self.enc0(torch.cat([x, f.sin(), f.cos()], dim=1)))
        h = silu(self.enc1(h))
        if output == 'bottleneck':
            return h
        y = self.out(silu(self.dec0(h)))
        return (y, h) if output == 'both' else y


def toy_denoiser(width=128):
    return EDMPrecond(ToyMLP(width))


_PRETRAINED = {}     # (mixture weights, settings) -> (network, global RNG state after training): runs in one process share it


def pretrain_teacher_copy(mixture, steps=1500, batch=512, lr=2e-3, seed=0, width=128):
    """Regress an MLP denoiser onto the exact one (EDM's weighting and sigma distribution): the
    stand-in for 'a pretrained network' that G and f_psi are copied from. Memoised, and the global RNG is
    left as a fresh training would leave it, so a second run in the same process gives the same numbers."""
    key = (tuple(mixture.weights.tolist()), steps, batch, lr, seed, width)
    if key not in _PRETRAINED:
        _PRETRAINED[key] = (_pretrain(mixture, steps, batch, lr, seed, width), torch.get_rng_state())
    net, rng_state = _PRETRAINED[key]
    torch.set_rng_state(rng_state)
    return copy.deepcopy(net)


def _pretrain(mixture, steps, batch, lr, seed, width):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = toy_denoiser(width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        x0 = mixture.sample(batch, g)
        sigma = fake_score_sigma(batch, generator=g)
        x = x0 + sigma[:, None] * torch.randn(batch, 2, generator=g)
        loss = (edm_loss_weight(sigma)[:, None] * (net(x, sigma) - mixture.denoise(x, sigma)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net


class MixtureBatches:
    """Real samples from the data mixture (SiDA's real images), a pure function of (seed, draw)."""

    def __init__(self, mixture, global_batch, seed=0):
        self.mixture, self.global_batch, self.seed, self.draws = mixture, global_batch, seed, 0

    def next(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws)
        self.draws += 1
        return Batch(self.mixture.sample(self.global_batch, g), {})


# -- metrics ----------------------------------------------------------------------------------------------
def sliced_wasserstein(a, b, directions=128, seed=0):
    """Sliced 2-Wasserstein distance between equal-size point sets (numpy: its sort is several times faster)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(directions, a.shape[1], generator=g)
    d = (d / d.norm(dim=1, keepdim=True)).numpy()
    # [directions, points], sorted along contiguous rows (numpy's vectorised sort; along columns is several times slower)
    pa, pb = np.sort(d @ a.float().numpy().T, axis=1), np.sort(d @ b.float().numpy().T, axis=1)
    return float(np.sqrt(((pa.astype(np.float64) - pb) ** 2).mean()))


def mode_report(samples, mixture):
    """Nearest-mode frequencies; a mode is covered when it holds at least a quarter of its weight."""
    d = (samples[:, None, :] - mixture.means[None]).norm(dim=-1)
    nearest = d.argmin(dim=1)
    on_mode = d.min(dim=1).values < 4 * mixture.std
    freq = torch.bincount(nearest[on_mode], minlength=len(mixture.weights)).float() / len(samples)
    covered = int((freq > 0.25 * mixture.weights).sum())
    tv = 0.5 * (freq / freq.sum().clamp(min=1e-12) - mixture.weights).abs().sum().item()
    return {'modes_covered': covered, 'modes_total': len(mixture.weights), 'on_mode': on_mode.float().mean().item(),
            'tv_mode_weights': tv, 'mode_frequencies': [round(x, 4) for x in freq.tolist()]}


# Learning rates (generator, fake score) picked on the toy. Without SiDA's adversarial pull, SiD's fake score tracks
# the generator better at a slower rate. With the defaults SiD ends at SW 0.054-0.067 at seeds 0-4 from an initial
# ~0.51 (2026-12-06); tests/train/test_toy.py checks a 5x reduction, which holds at every seed tried.
TOY_LR = {'sid': (5e-4, 3e-4), 'sida': (3e-4, 1e-3)}
PLOTTED = 2000                  # points per panel of samples.png


@contextlib.contextmanager
def one_thread():
    """The toy's tensors are small: one intra-op thread is faster than several (no fork-join per tiny kernel)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class ToyConfig:
    method: str = 'sid'
    iterations: int = 1000
    batch: int = 256
    lr_g: float | None = None           # None: the method's toy default (TOY_LR)
    lr_psi: float | None = None
    ema_halflife_images: float = 100_000
    ema_rampup: float = 0.25            # EMA half-life ramps up with images seen (the image recipes: 0.05, for longer runs)
    loss_scale_g_gan: float = 0.3       # the image constant 0.01 is invisible in 2-D; ~1 moves a biased teacher (spec)
    g_warmup_images: int = 20_000       # SiDA gates, scaled down to the toy's budget
    gan_start_images: int = 40_000
    pretrain_steps: int = 1000
    width: int = 128
    eval_samples: int = 50_000       # large enough that sampling noise (~0.008 SW) is well below the signal
    snapshots: int = 4
    seed: int = 0
    biased_teacher: bool = False        # SiDA check: teacher with uniform weights, data with the true ones


def run_toy(cfg, out_dir, progress=None):
    """Train, evaluate, write metrics.json and samples.png; returns the metrics."""
    with one_thread():
        return _run_toy(cfg, out_dir, progress)


def _run_toy(cfg, out_dir, progress):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = Mixture()
    teacher_mixture = Mixture(weights=torch.ones(8)) if cfg.biased_teacher else data
    teacher_copy = pretrain_teacher_copy(teacher_mixture, steps=cfg.pretrain_steps, seed=cfg.seed, width=cfg.width)
    G, fake = copy.deepcopy(teacher_copy), copy.deepcopy(teacher_copy)

    adversarial = cfg.method != 'sid'
    lr_g, lr_psi = TOY_LR[cfg.method]
    dc = DistillConfig(method=cfg.method, batch=cfg.batch, lr_g=cfg.lr_g or lr_g, lr_psi=cfg.lr_psi or lr_psi,
                       ema_halflife_images=cfg.ema_halflife_images,
                       ema_rampup=cfg.ema_rampup, loss_scale_g_gan=cfg.loss_scale_g_gan,
                       g_warmup_images=cfg.g_warmup_images if adversarial else 0, gan_start_images=cfg.gan_start_images,
                       total_images=cfg.iterations * cfg.batch, seed=cfg.seed)
    trainer = Distiller(dc, ExactDenoiser(teacher_mixture), G, fake, MixtureBatches(data, cfg.batch, cfg.seed), (2,))

    g = torch.Generator().manual_seed(cfg.seed + 12345)
    z = torch.randn(cfg.eval_samples, 2, generator=g)
    truth = data.sample(cfg.eval_samples, g)

    def evaluate(n=cfg.eval_samples):
        with torch.no_grad():
            return trainer.generate(trainer.G_ema, z[:n], {})

    initial = evaluate()
    snapshots = [(0, initial[:PLOTTED])]
    every = max(1, cfg.iterations // cfg.snapshots)
    for i in range(1, cfg.iterations + 1):
        trainer.iteration()
        if (i % every == 0 or i == cfg.iterations) and i < cfg.iterations:
            snapshots.append((trainer.images_seen, evaluate(PLOTTED)))     # only the points that are plotted
        if progress is not None:
            progress(i, cfg.iterations)
    final = evaluate()
    snapshots.append((trainer.images_seen, final[:PLOTTED]))
    modes = mode_report(final, data)
    metrics = {
        'method': cfg.method, 'iterations': cfg.iterations, 'images_seen': trainer.images_seen,
        'sliced_wasserstein_initial': sliced_wasserstein(initial, truth),
        'sliced_wasserstein_final': sliced_wasserstein(final, truth),
        'sliced_wasserstein_true_vs_true': sliced_wasserstein(data.sample(cfg.eval_samples, g), truth),
        **modes,
        'tv_vs_teacher': 0.5 * (torch.tensor(modes['mode_frequencies']) / max(modes['on_mode'], 1e-12)
                                - teacher_mixture.weights).abs().sum().item(),
        'biased_teacher': cfg.biased_teacher, 'seconds': round(time.perf_counter() - started, 1),
    }
    (out / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
    plot_snapshots(out / 'samples.png', snapshots, truth[:PLOTTED], title=f'{cfg.method} on the 8-Gaussian toy')
    return metrics


def plot_snapshots(path, snapshots, truth, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(snapshots), figsize=(3 * len(snapshots), 3.2), squeeze=False)
    for ax, (seen, pts) in zip(axes[0], snapshots):
        ax.scatter(truth[:, 0], truth[:, 1], s=1, c='tab:gray', alpha=0.3, label='data')
        ax.scatter(pts[:, 0], pts[:, 1], s=1, c='tab:red', alpha=0.5, label='generator')
        ax.set_xlim(-1.6, 1.6)
        ax.set_ylim(-1.6, 1.6)
        ax.set_aspect('equal')
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f'{seen:,} images')
    axes[0][0].legend(loc='lower left', fontsize=7, markerscale=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
