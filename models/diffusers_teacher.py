"""Stable-Diffusion-style teachers from a local diffusers directory, seen as EDM denoisers.

A diffusers UNet predicts epsilon (or v) at an integer DDPM timestep t of a variance-preserving
schedule with cumulative alphas abar_t. In EDM's variance-exploding view the same state is
x = x_vp / sqrt(abar_t) = x0 + sigma_t * eps with sigma_t = sqrt((1 - abar_t) / abar_t), so

    D(x; sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))            (epsilon prediction)
    D(x; sigma) = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v(...)       (v prediction)

with t(sigma) interpolated linearly in log sigma between the schedule's integer steps (exact at them).
Everything downstream (SiD losses, the one-step generator, export, serving) then treats SD like any
other sida denoiser. Latents are the VAE's, already multiplied by its scaling factor.

Directory layout (what `StableDiffusionPipeline.save_pretrained` writes): unet/, vae/, text_encoder/,
tokenizer/, scheduler/. Nothing is downloaded: every path is local.
"""

import json
import math
from pathlib import Path

import torch

SCHEDULES = ('linear', 'scaled_linear', 'squaredcos_cap_v2')
PREDICTIONS = ('epsilon', 'v_prediction')


def alphas_cumprod(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule='linear'):
    """abar_t for t = 0..N-1, by the DDPM schedule formulas diffusers' schedulers use (float64)."""
    n = num_train_timesteps
    if beta_schedule == 'linear':
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64, device='cpu')
    elif beta_schedule == 'scaled_linear':
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64, device='cpu') ** 2
    elif beta_schedule == 'squaredcos_cap_v2':
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64, device='cpu')
    else:
        raise ValueError(f'beta_schedule {beta_schedule!r} is not supported; use one of {SCHEDULES}')
    return torch.cumprod(1 - betas, dim=0)


def schedule_sigmas(**schedule):
    """sigma_t = sqrt((1 - abar_t) / abar_t), float64 [N]."""
    abar = alphas_cumprod(**schedule)
    return ((1 - abar) / abar).sqrt()


class DiffusersPrecond(torch.nn.Module):
    """EDM-style denoiser D(x, sigma) around a diffusers UNet2DConditionModel (epsilon or v prediction)."""

    def __init__(self, model, label_dim=0, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule='scaled_linear', prediction_type='epsilon'):
        super().__init__()
        if prediction_type not in PREDICTIONS:
            raise ValueError(f'prediction_type {prediction_type!r} is not supported; use one of {PREDICTIONS}')
        if label_dim:
            raise ValueError('diffusers teachers are text-conditioned here, not class-conditioned')
        self.model, self.label_dim, self.prediction_type = model, 0, prediction_type
        self.schedule = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                             beta_schedule=beta_schedule)
        sigmas = schedule_sigmas(**self.schedule)
        # Not weights: derived from the schedule, so they are kept out of the state dict.
        self.register_buffer('log_sigmas', sigmas.log().float(), persistent=False)
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])
        self.text_dim = model.config.cross_attention_dim
        self.compute_dtype = torch.float32

    def sigma_at(self, t):
        """sigma of integer timestep(s) t (float32)."""
        return self.log_sigmas[torch.as_tensor(t, device=self.log_sigmas.device).long()].exp()

    def timestep(self, sigma):
        """Continuous DDPM timestep of sigma: linear in log sigma between neighbouring integer steps."""
        log_sigma = sigma.float().log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        # searchsorted by counting (ONNX has no searchsorted): the first table entry >= log_sigma.
        hi = (self.log_sigmas.unsqueeze(0) < log_sigma.unsqueeze(1)).sum(dim=1).clamp(1, self.log_sigmas.shape[0] - 1)
        lo_val, hi_val = self.log_sigmas[hi - 1], self.log_sigmas[hi]
        frac = ((log_sigma - lo_val) / (hi_val - lo_val)).clamp(0, 1)
        return (hi - 1).float() + frac

    def forward(self, x, sigma, class_labels=None, augment_labels=None, text_embeds=None, output='denoised'):
        if output != 'denoised':
            raise ValueError('diffusers teachers have no encoder-only output (SiDA\'s discriminator is not supported for them)')
        if text_embeds is None:
            raise ValueError('a diffusers UNet is text-conditioned: pass text_embeds (the text encoder\'s hidden states)')
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        s = sigma.reshape(-1, 1, 1, 1)
        x_vp = x / (1 + s ** 2).sqrt()
        dtype = self.compute_dtype
        out = self.model(x_vp.to(dtype), self.timestep(sigma), encoder_hidden_states=text_embeds.to(dtype),
                         return_dict=False)[0].to(torch.float32)
        if self.prediction_type == 'epsilon':
            return x - s * out
        return x / (1 + s ** 2) - s / (1 + s ** 2).sqrt() * out


def guided(denoiser, x, sigma, text_embeds, uncond_embeds, scale):
    """Classifier-free guidance D_u + scale * (D_c - D_u); one batched call on [uncond; cond].

    scale == 1 is exactly the conditional denoiser (no unconditional pass is made).
    """
    if scale == 1:
        return denoiser(x, sigma, text_embeds=text_embeds)
    n = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(n)
    uncond = uncond_embeds.to(text_embeds.dtype).expand(n, -1, -1)
    d = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), text_embeds=torch.cat([uncond, text_embeds]))
    d_u, d_c = d.chunk(2)
    return d_u + scale * (d_c - d_u)


class Guided(torch.nn.Module):
    """A denoiser with guidance built in: what SiD-LSG calls at each of its four places."""

    def __init__(self, denoiser, uncond_embeds, scale):
        super().__init__()
        self.denoiser, self.scale = denoiser, float(scale)
        self.register_buffer('uncond_embeds', uncond_embeds, persistent=False)

    def forward(self, x, sigma, text_embeds=None, **_):
        return guided(self.denoiser, x, sigma, text_embeds, self.uncond_embeds, self.scale)


# -- loading ---------------------------------------------------------------------------------------------

def is_diffusers_dir(path):
    path = Path(path)
    return path.is_dir() and (path / 'unet' / 'config.json').is_file() and (path / 'scheduler').is_dir()


def _read_json(file):
    try:
        return json.loads(Path(file).read_text())
    except FileNotFoundError:
        raise ValueError(f'{file}: missing (a diffusers teacher directory needs unet/, vae/, text_encoder/, tokenizer/, '
                         'scheduler/)') from None
    except json.JSONDecodeError as e:
        raise ValueError(f'{file}: not valid JSON ({e})') from None


def scheduler_kwargs(path):
    """The DiffusersPrecond kwargs from scheduler/scheduler_config.json."""
    cfg = _read_json(Path(path) / 'scheduler' / 'scheduler_config.json')
    kw = {'num_train_timesteps': cfg.get('num_train_timesteps', 1000), 'beta_start': cfg.get('beta_start', 0.0001),
          'beta_end': cfg.get('beta_end', 0.02), 'beta_schedule': cfg.get('beta_schedule', 'linear'),
          'prediction_type': cfg.get('prediction_type', 'epsilon')}
    if cfg.get('rescale_betas_zero_snr'):
        raise ValueError(f'{path}/scheduler: rescale_betas_zero_snr gives abar = 0 at the last step (infinite sigma); '
                         'such teachers are not supported')
    if cfg.get('trained_betas') is not None:
        raise ValueError(f'{path}/scheduler: explicit trained_betas are not supported; use a named beta_schedule')
    if kw['beta_schedule'] not in SCHEDULES:
        raise ValueError(f'{path}/scheduler: beta_schedule {kw["beta_schedule"]!r} is not supported; use one of {SCHEDULES}')
    if kw['prediction_type'] not in PREDICTIONS:
        raise ValueError(f'{path}/scheduler: prediction_type {kw["prediction_type"]!r} is not supported; use one of {PREDICTIONS}')
    return kw


def constructor_kwargs(cls, config):
    """A diffusers model config reduced to `cls`'s constructor arguments (JSON-clean: tuples become lists)."""
    import inspect
    params = inspect.signature(cls.__init__).parameters
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if k in params}


def diffusers_spec(path):
    """The sida architecture spec of a diffusers teacher's UNet."""
    from diffusers import UNet2DConditionModel
    unet = constructor_kwargs(UNet2DConditionModel, _read_json(Path(path) / 'unet' / 'config.json'))
    return {'precond': 'DiffusersPrecond', 'precond_kwargs': scheduler_kwargs(path), 'network': 'UNet2DConditionModel',
            'network_kwargs': unet}


def load_unet_denoiser(path, device='cpu', dtype=torch.float32):
    """(DiffusersPrecond around the teacher's UNet, its spec)."""
    from diffusers import UNet2DConditionModel
    spec = diffusers_spec(path)
    try:
        unet = UNet2DConditionModel.from_pretrained(str(Path(path) / 'unet'), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f'{path}/unet: cannot load the UNet ({e})') from None
    return DiffusersPrecond(unet.float(), **spec['precond_kwargs']).to(device), spec


def load_vae(path, device='cpu'):
    from diffusers import AutoencoderKL
    try:
        return AutoencoderKL.from_pretrained(str(Path(path) / 'vae'), local_files_only=True).to(device).eval().requires_grad_(False)
    except (OSError, ValueError) as e:
        raise ValueError(f'{path}/vae: cannot load the VAE ({e})') from None
