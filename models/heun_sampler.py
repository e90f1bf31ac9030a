"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1 with S_churn = 0), for teachers."""

import torch


def heun_sigmas(num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, device='cpu'):
    """Karras time steps, high to low, with a final 0 appended."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / max(num_steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])


@torch.no_grad()
def edm_sample(denoiser, noise, num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, **cond):
    """noise: standard normal [N,C,H,W]. Uses 2*num_steps - 1 network evaluations."""
    sigma_min = max(sigma_min, getattr(denoiser, 'sigma_min', 0))
    sigma_max = min(sigma_max, getattr(denoiser, 'sigma_max', float('inf')))
    sigmas = heun_sigmas(num_steps, sigma_min, sigma_max, rho, noise.device)
    x = noise.to(torch.float64) * sigmas[0]
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:]):
        d_cur = (x - denoiser(x.float(), s_cur.float().expand(len(x)), **cond).double()) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if s_next > 0:   # second-order correction
            d_next = (x_next - denoiser(x_next.float(), s_next.float().expand(len(x)), **cond).double()) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.float()
