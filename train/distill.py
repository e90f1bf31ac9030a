"""The distillation loop: SiD, SiDA and SiD2A with one set of code (Zhou et al. 2024, 2025; docs/method.md §3-4).

Per iteration (the method's 1:1 alternation):
  1. fake-score step: x_g = G(z) without gradient; f_psi learns to denoise x_g (SiDA: and to tell noisy
     real images from noisy fakes with its own encoder); NaN/inf grads zeroed, SiDA clips grad values to 1.
     With --augment p, fakes (and, independently, reals) are augmented first and f_psi is told how (train/augment.py).
  2. generator step (after the warm-up): the SiD loss through both frozen denoisers (+ SiDA's adversarial
     term after its start), then the EMA of G. Never augmented: both denoisers get "untouched" labels.
     With guidance > 1 the teacher's prediction there is classifier-free guided (SiD-LSG's long guidance,
     train/guidance.py); the fake score's never is.
All randomness comes from generators seeded by the run's seed and shared by every rank: each rank draws
the global batch's noise and takes its slice, so results do not depend on the number of processes
(except SiDA's per-GPU BCE averages, which the method defines per GPU).
"""

import contextlib
import copy
import dataclasses

import torch

from train import augment
from train.guidance import ClassifierFreeGuidance
from train.sid import fake_score_loss, fake_score_sigma, generator_loss, generator_sigma
from train.sida import adversarial_generator_loss, fake_score_and_discriminator_loss

METHODS = ('sid', 'sida', 'sid2a')


@dataclasses.dataclass
class DistillConfig:
    method: str = 'sid'                  # sid (data-free) | sida (real images) | sid2a (SiDA from a SiD generator)
    alpha: float | None = None           # SiD alpha; None = 1.2 for sid, 1.0 for sida/sid2a
    init_sigma: float = 2.5              # the generator's fixed noise level
    tmax: int = 800                      # generator-loss times t ~ U[0, tmax/1000]
    P_mean: float = -1.2                 # fake-score log-normal sigma
    P_std: float = 1.2
    sigma_data: float = 0.5
    lr_g: float = 1e-5
    lr_psi: float = 1e-5
    adam_eps: float = 1e-8
    g_beta1: float = 0.0                 # the generator's Adam beta1 (the reference's FFHQ-64 SiD uses 0.9); f_psi keeps 0
    batch: int = 256                     # global batch (images per step, all ranks)
    batch_gpu: int | None = None         # micro-batch per rank (gradient accumulation); None = whole rank batch
    loss_scale_g: float = 100.0
    loss_scale_psi: float = 1.0
    loss_scale_d: float = 1.0            # SiDA discriminator
    loss_scale_g_gan: float = 0.01       # SiDA adversarial generator term
    g_warmup_images: int | None = None   # G frozen until then; None = 0 for sid, 100k for sida/sid2a
    gan_start_images: int = 200_000      # SiDA adversarial term joins the G loss
    clip_psi: float | None = None        # grad value clip on f_psi; None = 1 for sida/sid2a, off for sid
    augment: float | None = None         # augmentation probability of f_psi's images; None = 0.12 for networks that
                                         # take augment labels, else 0 (resolved by the Distiller, which sees the network)
    guidance: float = 1.0                # classifier-free guidance of the teacher in the G loss (SiD-LSG's long
                                         # guidance); 1 = off, > 1 needs a teacher trained with label dropout
    ema_halflife_images: float = 500_000
    ema_rampup: float = 0.05
    total_images: int = 1_000_000
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {self.method!r}')
        adversarial = self.method != 'sid'
        self.alpha = self.alpha if self.alpha is not None else (1.0 if adversarial else 1.2)
        self.g_warmup_images = self.g_warmup_images if self.g_warmup_images is not None else (100_000 if adversarial else 0)
        self.clip_psi = self.clip_psi if self.clip_psi is not None else (1.0 if adversarial else None)
        if self.augment is not None and not 0 <= self.augment <= 1:
            raise ValueError(f'augment is a probability in [0, 1], got {self.augment}')
        if not self.guidance >= 1:
            raise ValueError(f'guidance is a scale >= 1 (1 = off), got {self.guidance}')

    @property
    def adversarial(self):
        return self.method != 'sid'


def iteration_seed(seed, rank, iteration):
    return (seed * 1_000_003 + rank * 7_919 + iteration * 104_729) % (2 ** 63)


def new_step(device):
    """Tell CUDA-graph trees (torch.compile mode reduce-overhead) that the last step's outputs are dead; no-op otherwise."""
    if torch.device(device).type == 'cuda':
        torch.compiler.cudagraph_mark_step_begin()


def ema_beta(batch, images_seen, halflife_images, rampup):
    halflife = halflife_images if rampup is None else min(halflife_images, images_seen * rampup)
    return 0.5 ** (batch / max(halflife, 1e-8))


@torch.no_grad()
def update_ema(ema, net, beta):
    # One multi-tensor kernel instead of one launch per parameter.
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def sanitize_grads_(params, clip=None):
    """NaN -> 0 and +-inf -> +-1e5 in every gradient, then optionally clip values to [-clip, clip]."""
    grads = [p.grad for p in params if p.grad is not None]
    for g in grads:
        torch.nan_to_num_(g, nan=0.0, posinf=1e5, neginf=-1e5)
    if clip is not None and grads:
        torch._foreach_clamp_min_(grads, -clip)
        torch._foreach_clamp_max_(grads, clip)


def make_adam(params, lr, eps, device, betas=(0.0, 0.999)):
    """Adam (the distiller's betas are the method's (0, 0.999)); the fused CUDA kernel on GPUs: same update, one launch."""
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=torch.device(device).type == 'cuda')


@dataclasses.dataclass
class Batch:
    """One rank's share of a global batch: real data (or None) and its condition."""
    real: torch.Tensor | None
    cond: dict


class Distiller:
    """Holds the three networks, their optimisers and the loop's state; `iteration()` runs one step."""

    def __init__(self, cfg, teacher, generator, fake_score, batches, sample_shape, device='cpu', rank=0, world=1,
                 autocast_dtype=None, ddp=False):
        self.cfg, self.device, self.rank, self.world = cfg, torch.device(device), rank, world
        self.shape = tuple(sample_shape)
        self.teacher = teacher.eval().requires_grad_(False)
        self.G, self.fake = generator, fake_score
        self.G_ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self.batches = batches
        self.autocast_dtype = autocast_dtype
        self.rank_batch = cfg.batch // world
        if cfg.batch % world:
            raise ValueError(f'batch {cfg.batch} is not divisible by {world} processes')
        self.micro = cfg.batch_gpu or self.rank_batch
        if self.rank_batch % self.micro:
            raise ValueError(f'per-rank batch {self.rank_batch} is not divisible by batch_gpu {self.micro}')
        # Teachers trained with EDM's augmentation get 'no augmentation' labels (zeros) wherever nothing was augmented,
        # as in the reference; this also keeps map_augment in the graph, which DDP requires of every parameter.
        augment_layer = getattr(getattr(teacher, 'model', None), 'map_augment', None)
        self.augment_dim = augment_layer.in_features if augment_layer is not None else 0
        if cfg.augment is None:                 # resolved in place, like __post_init__'s defaults: config.json shows it
            cfg.augment = augment.DEFAULT_P if self.augment_dim else 0.0
        if cfg.augment and (len(self.shape) != 3 or self.augment_dim not in (0, augment.AUGMENT_DIM)):
            raise ValueError(f'augmentation needs images and networks with {augment.AUGMENT_DIM} augment labels (or none); '
                             f'got samples of shape {self.shape} and augment_dim {self.augment_dim}')
        self.opt_g = make_adam(self.G.parameters(), cfg.lr_g, cfg.adam_eps, self.device, betas=(cfg.g_beta1, 0.999))
        self.opt_psi = make_adam(self.fake.parameters(), cfg.lr_psi, cfg.adam_eps, self.device)
        # DDP wraps G and f_psi for their own updates only; the other network's pass uses the plain module.
        self.G_train = self._wrap(self.G) if ddp else self.G
        self.fake_train = self._wrap(self.fake) if ddp else self.fake
        self.rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.images_seen, self.iterations = 0, 0

    def _wrap(self, module):
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

    # -- random draws: the global batch on every rank, this rank's slice kept ----------------------------
    def _draw(self, fn, *shape):
        full = fn((self.cfg.batch,) + shape)
        return full[self.rank * self.rank_batch:(self.rank + 1) * self.rank_batch]

    def _normal(self, shape):
        return self._draw(lambda s: torch.randn(s, device=self.device, generator=self.rng), *shape)

    def _sigma(self, fn, **kw):
        return self._draw(lambda s: fn(s[0], device=self.device, generator=self.rng, **kw))

    def _augment_params(self):
        """This rank's slice of the global batch's augmentation draw, or None when augmentation is off."""
        if not self.cfg.augment:
            return None
        return self._draw(lambda s: augment.draw(s[0], self.cfg.augment, self.rng, self.device))

    def _augmented(self, images, params):
        """(augmented images, their augment labels if the network reads them, else None)."""
        if params is None:
            return images, None
        with torch.no_grad():
            return augment.apply(images, params), (augment.labels(params) if self.augment_dim else None)

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def generate(self, net, z, cond):
        return net(self.cfg.init_sigma * z, torch.full((z.shape[0],), self.cfg.init_sigma, device=z.device), **cond)

    # -- one iteration ---------------------------------------------------------------------------------
    def iteration(self):
        cfg = self.cfg
        # Dropout draws from the global RNG: reseed it from (seed, rank, iteration) so that a resumed run, on any
        # number of processes, continues exactly; no per-rank RNG state needs to be checkpointed.
        torch.manual_seed(iteration_seed(cfg.seed, self.rank, self.iterations))
        new_step(self.device)
        stats = self._fake_score_step(self.shape)
        if self.images_seen >= cfg.g_warmup_images:
            stats.update(self._generator_step(self.shape))
            beta = ema_beta(cfg.batch, self.images_seen, cfg.ema_halflife_images, cfg.ema_rampup)
            update_ema(self.G_ema, self.G, beta)
        self.images_seen += cfg.batch
        self.iterations += 1
        # Losses stay on the device until here: one host sync per iteration, not one per micro-batch.
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in stats.values()]).tolist()
        return dict(zip(stats, values))

    def _micro_batches(self, *tensors, cond):
        if self.augment_dim:
            cond = {**cond, 'augment_labels': torch.zeros(self.rank_batch, self.augment_dim, device=self.device)}
        for start in range(0, self.rank_batch, self.micro):
            sl = slice(start, start + self.micro)
            yield [t[sl] if t is not None else None for t in tensors], {k: v[sl] for k, v in cond.items()}, \
                start + self.micro >= self.rank_batch

    def _fake_score_step(self, shape):
        cfg = self.cfg
        batch = self.batches.next()
        z, eps = self._normal(shape), self._normal(shape)
        sigma = self._sigma(fake_score_sigma, P_mean=cfg.P_mean, P_std=cfg.P_std)
        # Fakes and reals are augmented independently (the reference's SiDA): two draws, fakes first.
        aug_fake = self._augment_params()
        aug_real = self._augment_params() if cfg.adversarial else None
        self.G.eval()
        self.fake.train().requires_grad_(True)
        self.opt_psi.zero_grad(set_to_none=True)
        totals = {'loss_psi': 0.0, 'loss_d': 0.0}
        for (z_m, eps_m, sigma_m, real_m, aug_fake_m, aug_real_m), cond, last in self._micro_batches(
                z, eps, sigma, batch.real, aug_fake, aug_real, cond=batch.cond):
            with torch.no_grad(), self._autocast():
                x_g = self.generate(self.G, z_m, cond).float()
            # G ran with "untouched" labels in cond; f_psi learns on the augmented images and is told how.
            x_g, fake_labels = self._augmented(x_g, aug_fake_m)
            real_m, real_labels = self._augmented(real_m, aug_real_m)
            if fake_labels is not None:
                cond = {**cond, 'augment_labels': fake_labels}
            with self._sync(self.fake_train, last), self._autocast():
                if cfg.adversarial:
                    loss_psi, loss_d = fake_score_and_discriminator_loss(self.fake_train, x_g, real_m, sigma_m, eps_m,
                                                                         cfg.sigma_data, real_augment_labels=real_labels,
                                                                         **cond)
                    loss = (loss_psi.sum() * cfg.loss_scale_psi + loss_d.sum() * cfg.loss_scale_d) / self.rank_batch
                    totals['loss_d'] += loss_d.detach().sum() / self.rank_batch
                else:
                    loss_psi = fake_score_loss(self.fake_train, x_g, sigma_m, eps_m, cfg.sigma_data, **cond)
                    loss = loss_psi.sum() * cfg.loss_scale_psi / self.rank_batch
                loss.backward()
            totals['loss_psi'] += loss_psi.detach().sum() / self.rank_batch
        sanitize_grads_(self.fake.parameters(), cfg.clip_psi)
        self.opt_psi.step()
        return totals if cfg.adversarial else {'loss_psi': totals['loss_psi']}

    def _generator_step(self, shape):
        cfg = self.cfg
        batch = self.batches.next()
        z, eps = self._normal(shape), self._normal(shape)
        sigma = self._sigma(generator_sigma, tmax=cfg.tmax)
        gan = cfg.adversarial and self.images_seen >= cfg.gan_start_images
        # No augmentation here, as in the reference: x_t reaches the teacher and f_psi (and SiDA's logits) with
        # "untouched" labels, so both score the clean distribution the generator is meant to match.
        self.G.train()
        self.fake.eval().requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        totals = {'loss_g': 0.0, **({'loss_g_gan': 0.0} if gan else {})}
        elements = float(torch.tensor(shape).prod())
        # Long guidance: the teacher's score is guided, the fake score (which follows G's own samples) is not.
        teacher = ClassifierFreeGuidance(self.teacher, cfg.guidance) if cfg.guidance != 1 else self.teacher
        for (z_m, eps_m, sigma_m), cond, last in self._micro_batches(z, eps, sigma, cond=batch.cond):
            with self._sync(self.G_train, last), self._autocast():
                x_g = self.generate(self.G_train, z_m, cond).float()
                loss_sid, w, keep, bottleneck = generator_loss(x_g, teacher, self.fake, sigma_m, eps_m, cfg.alpha,
                                                               with_logits=gan, **cond)
                loss = loss_sid.sum() * cfg.loss_scale_g / self.rank_batch
                if gan:
                    loss_gan = adversarial_generator_loss(bottleneck, w, elements).sum() * cfg.loss_scale_g_gan / self.rank_batch
                    loss = 0.5 * loss + 0.5 * loss_gan
                    totals['loss_g_gan'] += loss_gan.detach() / cfg.loss_scale_g_gan   # logged unscaled, like loss_g
                loss.backward()
            totals['loss_g'] += loss_sid.detach().sum() / self.rank_batch
        sanitize_grads_(self.G.parameters())
        self.opt_g.step()
        return totals

    @staticmethod
    def _sync(module, last):
        """Gradient all-reduce only on the last accumulation round."""
        if last or not hasattr(module, 'no_sync'):
            return contextlib.nullcontext()
        return module.no_sync()

    # -- state for checkpoints ---------------------------------------------------------------------------
    def modules(self):
        return {'generator': self.G, 'generator_ema': self.G_ema, 'fake_score': self.fake}

    def optimizers(self):
        return {'optimizer_g': self.opt_g, 'optimizer_psi': self.opt_psi}

    def progress(self):
        return {'images_seen': self.images_seen, 'iterations': self.iterations, 'data_draws': self.batches.draws}

    def load_progress(self, progress):
        self.images_seen, self.iterations = progress['images_seen'], progress['iterations']
        self.batches.draws = progress['data_draws']
