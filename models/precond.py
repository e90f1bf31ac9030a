"""Preconditioning (Karras et al. 2022, Table 1): wraps any raw network F into a denoiser D(x; sigma).

D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma)).
The network knows nothing about sigma schedules; these classes know nothing about architectures.
"""


import torch


class Precond(torch.nn.Module):
    """Shared plumbing; subclasses give the four coefficients."""

    sigma_min = 0.0
    sigma_max = float('inf')

    def __init__(self, model, label_dim=0):
        super().__init__()
        self.model = model
        self.label_dim = label_dim
        # The network body may run in half precision (exports, EDM's use_fp16); the preconditioning
        # and the output stay float32. Not a weight: it is chosen at run/export time.
        self.compute_dtype = torch.float32

    def coefficients(self, sigma):
        raise NotImplementedError

    def forward(self, x, sigma, class_labels=None, augment_labels=None, text_embeds=None, output='denoised'):
        """x: [N,C,H,W] noisy images (or [N,D] vectors); sigma: scalar or [N]; class_labels: one-hot [N, label_dim].

        output='denoised' gives D(x); 'bottleneck' the encoder's last feature map (float32);
        'both' returns (D(x), bottleneck) from a single pass.
        """
        x = x.to(torch.float32)
        per_sample = (x.shape[0],) + (1,) * (x.ndim - 1)   # images [N,1,1,1]; also works for flat data [N,1]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, *per_sample[1:]).expand(per_sample)
        if self.label_dim:
            class_labels = (torch.zeros([x.shape[0], self.label_dim], device=x.device) if class_labels is None
                            else class_labels.to(torch.float32).reshape(-1, self.label_dim))
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        half = self.compute_dtype != torch.float32
        cast = (lambda t: t.to(self.compute_dtype) if t is not None else None) if half else (lambda t: t)
        result = self.model(cast(c_in * x), cast(c_noise.flatten()), class_labels=cast(class_labels),
                            augment_labels=cast(augment_labels), text_embeds=cast(text_embeds), output=output)
        if output == 'bottleneck':
            return result.to(torch.float32)
        F_x, bottleneck = result if output == 'both' else (result, None)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        return (D_x, bottleneck.to(torch.float32)) if output == 'both' else D_x


class EDMPrecond(Precond):
    def __init__(self, model, label_dim=0, sigma_data=0.5, sigma_min=0.0, sigma_max=float('inf')):
        super().__init__(model, label_dim)
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def coefficients(self, sigma):
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(Precond):
    """Variance-preserving (DDPM++ 'VP' of Song et al.), in sigma parameterisation."""

    def __init__(self, model, label_dim=0, beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5):
        super().__init__(model, label_dim)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma):
        return torch.ones_like(sigma), -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(Precond):
    """Variance-exploding (NCSN++ 'VE' of Song et al.)."""

    def __init__(self, model, label_dim=0, sigma_min=0.02, sigma_max=100):
        super().__init__(model, label_dim)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def coefficients(self, sigma):
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


def edm_loss_weight(sigma, sigma_data=0.5):
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, EDM's denoising-loss weight."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def karras_sigma(t, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """The rho-schedule indexed by continuous t in [0, 1] (t=0 -> sigma_min, t=1 -> sigma_max)."""
    t = torch.as_tensor(t)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + (1 - t) * (lo - hi)) ** rho


