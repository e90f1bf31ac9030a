"""SiD-LSG (Zhou et al. 2024, arXiv 2406.01561): data-free SiD from a Stable-Diffusion-style teacher.

What changes against `train/distill.py` (docs/method.md §5):
  - latent space, a diffusers UNet seen as an EDM denoiser (`models.diffusers_teacher.DiffusersPrecond`), so the
    generator is still D(sigma_init * z; sigma_init) with sigma_init = sigma(t_init = 625): exactly the reference's
    "noise a zero latent to step 625 and take the x0 prediction";
  - integer DDPM times t ~ U{tmin, ..., tmax - 1} for both losses, noised through the teacher's schedule;
  - the fake score learns with the unweighted epsilon-MSE of its *guided* prediction, with a share of empty prompts
    whenever guidance is not 1;
  - the generator loss is SiD's (train/sid.py, alpha 1, loss scale 1) on guided x0 predictions of both denoisers;
  - guidance ("long and short guidance"): kappa at the four places, one value by default.
Everything else (micro-batching, seeded draws shared by all ranks, DDP, EMA, NaN hygiene, checkpoints) is the
Distiller's.
"""

import dataclasses

import torch

from models.diffusers_teacher import Guided
from train.distill import Distiller, sanitize_grads_
from train.sid import as_per_sample, finite_rows, generator_loss, per_sample_sum


@dataclasses.dataclass
class LSGConfig:
    guidance: float = 2.0                  # LSG: one kappa everywhere (released runs 1.5 to 4.5)
    guidance_fake_train: float | None = None   # kappa_1 (None = guidance); < 1 alone is "short" guidance
    guidance_fake_eval: float | None = None    # kappa_2 = kappa_3
    guidance_real_eval: float | None = None    # kappa_4; > 1 alone is "long" guidance
    t_init: int = 625
    tmin: int = 20
    tmax: int = 980
    alpha: float = 1.0
    lr_g: float = 1e-6
    lr_psi: float = 1e-6
    adam_eps: float = 1e-8
    g_beta1: float = 0.0
    batch: int = 512
    batch_gpu: int | None = None
    loss_scale_g: float = 1.0
    loss_scale_psi: float = 1.0
    empty_prompt_prob: float = 0.1         # share of "" prompts in the fake-score update when guidance != 1
    ema_halflife_images: float = 50_000
    ema_rampup: float = 0.05
    total_images: int = 10_000_000
    seed: int = 0
    init_sigma: float = 0.0                # filled in from t_init and the teacher's schedule
    method: str = 'sid-lsg'
    g_warmup_images: int = 0
    adversarial: bool = False
    augment: float = 0.0                   # no augmentation of latents (an SD UNet takes no augment labels)

    def __post_init__(self):
        for name in ('guidance_fake_train', 'guidance_fake_eval', 'guidance_real_eval'):
            if getattr(self, name) is None:
                setattr(self, name, self.guidance)
        if not 0 <= self.tmin < self.tmax <= 1000:
            raise ValueError(f'need 0 <= tmin < tmax <= 1000, got tmin={self.tmin}, tmax={self.tmax}')
        if not 0 <= self.t_init < 1000:
            raise ValueError(f't_init must be a timestep in [0, 1000), got {self.t_init}')


def lsg_fake_score_loss(fake_score, x_g, sigma, eps, **cond):
    """Unweighted epsilon-MSE of the (guided) fake score on generated latents, per kept sample (summed over elements,
    as the reference reduces it: sum, times the loss scale, over the batch).

    eps_hat = (x_t - D(x_t)) / sigma, so this is ||D(x_t) - x_g||^2 / sigma^2.
    """
    s = as_per_sample(sigma, x_g)
    x_t = x_g + s * eps
    eps_hat = (x_t - fake_score(x_t, sigma, **cond)) / s
    keep = finite_rows(x_g, eps_hat)
    return per_sample_sum((eps_hat[keep] - eps[keep]) ** 2)


class LSGDistiller(Distiller):
    """The Distiller's loop with SiD-LSG's two steps; `uncond_embeds` is the text encoder's output for ""."""

    def __init__(self, cfg, teacher, generator, fake_score, batches, sample_shape, uncond_embeds, offload_teacher=False, **kw):
        steps = teacher.schedule['num_train_timesteps']
        if cfg.tmax > steps or cfg.t_init >= steps:
            raise ValueError(f'the teacher has {steps} timesteps: need t_init < {steps} and tmax <= {steps} '
                             f'(got t_init={cfg.t_init}, tmax={cfg.tmax})')
        cfg.init_sigma = float(teacher.sigma_at(cfg.t_init))
        super().__init__(cfg, teacher, generator, fake_score, batches, sample_shape, **kw)
        self.uncond = uncond_embeds.to(self.device)
        self.sigmas = teacher.log_sigmas.exp().to(self.device)        # sigma of every integer step, wherever the teacher is
        # The frozen teacher is needed only in the generator step: offloaded, it lives in host memory during the
        # fake-score step (one UNet fewer on the device then), at the price of two host<->device copies per iteration.
        self.offload_teacher = offload_teacher and self.device.type == 'cuda'
        if self.offload_teacher:
            self.teacher.to('cpu')

    def _times(self):
        t = self._draw(lambda s: torch.randint(self.cfg.tmin, self.cfg.tmax, s, device=self.device, generator=self.rng))
        return self.sigmas[t]

    def _fake_score_step(self, shape):
        cfg = self.cfg
        cond = dict(self.batches.next().cond)
        z, eps = self._normal(shape), self._normal(shape)
        sigma = self._times()
        drop = self._draw(lambda s: torch.rand(s, device=self.device, generator=self.rng))
        # The fake score must know the "" score whenever the G loss evaluates it with guidance (as the reference does).
        if (cfg.guidance_fake_train != 1 or cfg.guidance_fake_eval != 1) and cfg.empty_prompt_prob > 0:
            empty = (drop < cfg.empty_prompt_prob).reshape(-1, 1, 1)
            cond['text_embeds'] = torch.where(empty, self.uncond.expand_as(cond['text_embeds']), cond['text_embeds'])
        self.G.eval()
        self.fake.train().requires_grad_(True)
        self.opt_psi.zero_grad(set_to_none=True)
        fake = Guided(self.fake_train, self.uncond, cfg.guidance_fake_train)
        total = 0.0
        for (z_m, eps_m, sigma_m), cond_m, last in self._micro_batches(z, eps, sigma, cond=cond):
            with torch.no_grad(), self._autocast():
                x_g = self.generate(self.G, z_m, cond_m).float()
            with self._sync(self.fake_train, last), self._autocast():
                loss_psi = lsg_fake_score_loss(fake, x_g, sigma_m, eps_m, **cond_m)
                (loss_psi.sum() * cfg.loss_scale_psi / self.rank_batch).backward()
            total += loss_psi.detach().sum() / self.rank_batch
        sanitize_grads_(self.fake.parameters())
        self.opt_psi.step()
        return {'loss_psi': total}

    def _generator_step(self, shape):
        cfg = self.cfg
        cond = self.batches.next().cond
        z, eps = self._normal(shape), self._normal(shape)
        sigma = self._times()
        self.G.train()
        self.fake.eval().requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        if self.offload_teacher:
            self.teacher.to(self.device, non_blocking=True)
        teacher = Guided(self.teacher, self.uncond, cfg.guidance_real_eval)
        fake = Guided(self.fake, self.uncond, cfg.guidance_fake_eval)
        total = 0.0
        for (z_m, eps_m, sigma_m), cond_m, last in self._micro_batches(z, eps, sigma, cond=cond):
            with self._sync(self.G_train, last), self._autocast():
                x_g = self.generate(self.G_train, z_m, cond_m).float()
                loss, _, _, _ = generator_loss(x_g, teacher, fake, sigma_m, eps_m, cfg.alpha, **cond_m)
                (loss.sum() * cfg.loss_scale_g / self.rank_batch).backward()
            total += loss.detach().sum() / self.rank_batch
        if self.offload_teacher:
            self.teacher.to('cpu')
        sanitize_grads_(self.G.parameters())
        self.opt_g.step()
        return {'loss_g': total}
