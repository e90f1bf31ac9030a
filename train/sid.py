"""Score identity Distillation (Zhou et al., ICML 2024; docs/method.md §3): noise levels and losses, as pure functions.

Denoisers are any callables D(x, sigma, **cond) -> x0 estimate. Losses return one value per sample
(summed over pixels); the loop reduces them (sum, times a loss scale, over the per-GPU batch).
"""

import torch

from models.precond import edm_loss_weight, karras_sigma


def fake_score_sigma(batch, P_mean=-1.2, P_std=1.2, device='cpu', generator=None):
    """EDM's training log-normal: sigma = exp(P_mean + P_std * n), n ~ N(0, 1), one per sample."""
    return (P_mean + P_std * torch.randn(batch, device=device, generator=generator)).exp()


def generator_sigma(batch, tmax=800, sigma_min=0.002, sigma_max=80.0, rho=7.0, device='cpu', generator=None):
    """t ~ U[0, tmax/1000] mapped through the Karras rho-schedule: sigma in [0.002, 24.41] for tmax 800."""
    t = torch.rand(batch, device=device, generator=generator) * (tmax / 1000)
    return karras_sigma(t, sigma_min, sigma_max, rho)


def finite_rows(*tensors):
    """[B] bool: samples whose every tensor is free of NaN/inf; the rest are dropped from the loss."""
    keep = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        keep &= torch.isfinite(t.detach().flatten(1)).all(dim=1)
    return keep


def per_sample_sum(x):
    return x.flatten(1).sum(dim=1)


def as_per_sample(sigma, x):
    """[B] noise levels shaped to broadcast against x ([B,1,1,1] for images, [B,1] for vectors)."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


def fake_score_loss(fake_score, x_g, sigma, eps, sigma_data=0.5, **cond):
    """EDM denoising score matching on generated samples (x_g carries no gradient here).

    Returns the loss lambda(sigma) * ||f_psi(x_g + sigma*eps) - x_g||^2 per kept (finite) sample.
    """
    denoised = fake_score(x_g + as_per_sample(sigma, x_g) * eps, sigma, **cond)
    keep = finite_rows(x_g, denoised)
    return edm_loss_weight(sigma[keep], sigma_data) * per_sample_sum((denoised[keep] - x_g[keep]) ** 2)


def sid_normaliser(x_g, y_real):
    """w = mean over pixels of |x_g - y_real|, at least 1e-5, per sample; no gradient flows through it."""
    return (x_g - y_real).detach().float().abs().flatten(1).mean(dim=1).clamp(min=1e-5)


def sid_loss(x_g, y_real, y_fake, w, alpha=1.2):
    """Per-sample SiD generator loss: sum over pixels of (y_r - y_f) * ((y_r - x_g) - alpha (y_r - y_f)) / w.

    Equal to [<y_r - y_f, y_f - x_g> + (1 - alpha) ||y_r - y_f||^2] / w.
    """
    diff = y_real - y_fake
    return per_sample_sum(diff * ((y_real - x_g) - alpha * diff)) / w


def generator_loss(x_g, teacher, fake_score, sigma, eps, alpha=1.2, with_logits=False, **cond):
    """Noise the generator's output and score it with both frozen denoisers.

    Gradients reach x_g directly *and* through x_t into both denoisers' inputs (never their weights):
    detaching x_t here would silently turn SiD into a DMD-like update.
    Samples with NaN/inf anywhere are dropped (indexing, so the loss stays finite).
    with_logits: the fake score also returns its encoder bottleneck from the same pass (SiDA).
    Returns (loss per kept sample, w per kept sample, keep mask [B], bottleneck of kept samples or None).
    """
    x_t = x_g + as_per_sample(sigma, x_g) * eps
    y_real = teacher(x_t, sigma, **cond)
    if with_logits:
        y_fake, bottleneck = fake_score(x_t, sigma, output='both', **cond)
    else:
        y_fake, bottleneck = fake_score(x_t, sigma, **cond), None
    keep = finite_rows(x_g, y_real, y_fake, *([bottleneck] if with_logits else []))
    x_g, y_real, y_fake = x_g[keep], y_real[keep], y_fake[keep]
    w = sid_normaliser(x_g, y_real)
    return sid_loss(x_g, y_real, y_fake, w, alpha), w, keep, (bottleneck[keep] if with_logits else None)
