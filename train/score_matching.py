"""Teacher training: EDM denoising score matching (Karras et al. 2022) for users without a published teacher.

loss = lambda(sigma) * ||D(x + sigma n; sigma) - x||^2, sigma ~ logN(P_mean, P_std), summed over pixels and
averaged over the batch; Adam with a linear learning-rate warm-up; EMA; horizontal flips as augmentation.
Same runner, checkpoints and logs as distillation.
"""

import copy
import dataclasses

import torch

from models.precond import edm_loss_weight
from train.distill import ema_beta, iteration_seed, make_adam, new_step, sanitize_grads_, update_ema
from train.sid import fake_score_sigma, per_sample_sum


@dataclasses.dataclass
class TeacherConfig:
    lr: float = 1e-3
    lr_rampup_images: int = 10_000_000 // 16    # EDM ramps over 10 Mimg; shorter runs ramp over proportionally less
    batch: int = 512
    batch_gpu: int | None = None
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    ema_halflife_images: float = 500_000
    ema_rampup: float = 0.05
    xflip: bool = True
    total_images: int = 10_000_000
    seed: int = 0


class TeacherTrainer:
    scheduled_hyperparameters = ('lr',)     # set from the ramp-up in every iteration: a resume need not compare it

    def __init__(self, cfg, net, batches, device='cpu', rank=0, world=1, autocast_dtype=None, ddp=False):
        self.cfg, self.device, self.rank, self.world = cfg, torch.device(device), rank, world
        self.net, self.batches, self.autocast_dtype = net, batches, autocast_dtype
        self.ema = copy.deepcopy(net).eval().requires_grad_(False)
        self.rank_batch = cfg.batch // world
        self.micro = cfg.batch_gpu or self.rank_batch
        if cfg.batch % world or self.rank_batch % self.micro:
            raise ValueError(f'batch {cfg.batch} must split evenly over {world} processes and micro-batches of {self.micro}')
        self.opt = make_adam(net.parameters(), cfg.lr, 1e-8, self.device, betas=(0.9, 0.999))
        if ddp:
            from torch.nn.parallel import DistributedDataParallel
            self.net_train = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        else:
            self.net_train = net
        self.rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.images_seen, self.iterations = 0, 0

    def _slice(self, full):
        return full[self.rank * self.rank_batch:(self.rank + 1) * self.rank_batch]

    def iteration(self):
        cfg = self.cfg
        torch.manual_seed(iteration_seed(cfg.seed, self.rank, self.iterations))   # dropout: exact on resume
        new_step(self.device)
        batch = self.batches.next()
        x = batch.real
        shape = tuple(x.shape[1:])
        sigma = self._slice(fake_score_sigma(cfg.batch, cfg.P_mean, cfg.P_std, device=self.device, generator=self.rng))
        noise = self._slice(torch.randn((cfg.batch,) + shape, device=self.device, generator=self.rng))
        if cfg.xflip:
            flip = self._slice(torch.rand(cfg.batch, device=self.device, generator=self.rng) < 0.5)
            x = torch.where(flip.reshape(-1, 1, 1, 1), x.flip(3), x)
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, self.rank_batch, self.micro):
            sl = slice(start, start + self.micro)
            cond = {k: v[sl] for k, v in batch.cond.items()}
            last = start + self.micro >= self.rank_batch
            sync = self.net_train.no_sync() if (not last and hasattr(self.net_train, 'no_sync')) else _null()
            autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                        else torch.autocast(self.device.type, enabled=False))
            with sync, autocast:
                xs, s = x[sl], sigma[sl]
                denoised = self.net_train(xs + s.reshape(-1, 1, 1, 1) * noise[sl], s, **cond)
                loss = edm_loss_weight(s, cfg.sigma_data) * per_sample_sum((denoised - xs) ** 2)
                loss.sum().div(self.rank_batch).backward()
            total += loss.sum().item() / self.rank_batch
        for group in self.opt.param_groups:
            group['lr'] = cfg.lr * min(1.0, (self.images_seen + cfg.batch) / max(cfg.lr_rampup_images, 1))
        sanitize_grads_(self.net.parameters())
        self.opt.step()
        update_ema(self.ema, self.net, ema_beta(cfg.batch, self.images_seen, cfg.ema_halflife_images, cfg.ema_rampup))
        self.images_seen += cfg.batch
        self.iterations += 1
        return {'loss': total}

    def modules(self):
        return {'net': self.net, 'net_ema': self.ema}

    def optimizers(self):
        return {'optimizer': self.opt}

    def progress(self):
        return {'images_seen': self.images_seen, 'iterations': self.iterations, 'data_draws': self.batches.draws}

    def load_progress(self, progress):
        self.images_seen, self.iterations = progress['images_seen'], progress['iterations']
        self.batches.draws = progress['data_draws']


def _null():
    import contextlib
    return contextlib.nullcontext()
