"""Distillation throughput (`sida bench train`): generator images/s, step latency, memory and MFU per setting.

Runs the real `Distiller` (one fake-score update + one generator update per iteration) on random
weights of a reference network (speed does not depend on them) at a fixed per-device batch, once per
configuration: precision (fp32, tf32, bf16 autocast), torch.compile, channels-last, SiD or SiDA.
FLOPs per iteration are counted on an eager fp32 copy of the same setting (a compiled graph hides its
operations from the counter), so every configuration of a method is held to the same work.
"""

import copy
import time

import torch

from models.architecture import build_denoiser, ddpmpp
from models.demo import tiny_spec
from train.batches import LabelBatches
from train.distill import Batch, DistillConfig, Distiller
from train.launch import configure_backends, prepare

# name -> (method, precision, torch.compile mode or False, channels-last)
CONFIGS = {
    'lsg-fp32': ('sid-lsg', 'fp32', False, False),     # SiD-LSG on an SD-shaped UNet (networks sd15-unet, tiny-sd)
    'lsg-bf16': ('sid-lsg', 'bf16', False, False),
    'lsg-bf16-compile': ('sid-lsg', 'bf16', 'default', False),
    'fp32': ('sid', 'fp32', False, False),
    'tf32': ('sid', 'tf32', False, False),
    'bf16': ('sid', 'bf16', False, False),
    # channels-last measured slower on the H200 (2026-12-02): extra layout copies, most likely around GroupNorm.
    'bf16-cl': ('sid', 'bf16', False, True),
    'bf16-compile': ('sid', 'bf16', 'default', False),
    'bf16-compile-cl': ('sid', 'bf16', 'default', True),
    'bf16-compile-cg': ('sid', 'bf16', 'reduce-overhead', False),           # + CUDA graphs
    'bf16-compile-autotune': ('sid', 'bf16', 'max-autotune-no-cudagraphs', False),
    'sida-fp32': ('sida', 'fp32', False, False),
    'sida-bf16': ('sida', 'bf16', False, False),
    'sida-bf16-compile': ('sida', 'bf16', 'default', False),
    'sida-bf16-compile-cg': ('sida', 'bf16', 'reduce-overhead', False),
}
NETWORKS = {
    'ddpmpp-cifar10': (lambda: ddpmpp(label_dim=10), 'EDM DDPM++ CIFAR-10 cond. (55.7M params)'),
    'demo': (tiny_spec, 'the small demo DDPM++ (models/demo.py)'),
    'sd15-unet': (lambda: 'sd15', 'Stable Diffusion 1.5 UNet shapes (860M params, 64x64x4 latents, 77x768 text)'),
    'tiny-sd': (lambda: 'tiny', 'a tiny SD-shaped UNet (models/random_sd.py)'),
}
LATENT_NETWORKS = ('sd15-unet', 'tiny-sd')


class RandomImages:
    """SiDA's real batch without the I/O: random images with uniform labels (speed only)."""

    def __init__(self, label_dim, batch, shape, device):
        self.inner, self.batch, self.shape, self.device, self.draws = LabelBatches(label_dim, batch, 0, 0, 1, device), batch, shape, \
            device, 0

    def next(self):
        self.draws += 1
        cond = self.inner.next().cond
        return Batch(torch.rand(self.batch, *self.shape, device=self.device) * 2 - 1, cond)


class RandomText:
    """SiD-LSG's prompt batches without a text encoder: random hidden states of CLIP's shape (speed only)."""

    def __init__(self, batch, tokens, dim, device):
        self.batch, self.tokens, self.dim, self.device, self.draws = batch, tokens, dim, device, 0

    def next(self):
        self.draws += 1
        return Batch(None, {'text_embeds': torch.randn(self.batch, self.tokens, self.dim, device=self.device)})


def build_lsg_distiller(name, precision, compile_, channels_last, batch, device):
    from diffusers import UNet2DConditionModel

    from models.diffusers_teacher import DiffusersPrecond
    from models.random_sd import CONFIGS as SD
    from train.sid_lsg import LSGConfig, LSGDistiller
    configure_backends(tf32=precision == 'tf32')
    torch.manual_seed(0)
    unet = SD[name]['unet']
    teacher = DiffusersPrecond(UNet2DConditionModel(**unet))
    nets = [prepare(copy.deepcopy(teacher), device, channels_last, compile_) for _ in range(3)]
    dim, side = unet['cross_attention_dim'], unet['sample_size']
    return LSGDistiller(LSGConfig(batch=batch), nets[0].requires_grad_(False), nets[1].requires_grad_(True), nets[2].requires_grad_(True),
                        RandomText(batch, 77, dim, device), (unet['in_channels'], side, side), torch.zeros(1, 77, dim), device=device,
                        autocast_dtype=torch.bfloat16 if precision == 'bf16' else None)


def build_distiller(spec, method, precision, compile_, channels_last, batch, device):
    if method == 'sid-lsg':
        return build_lsg_distiller(spec, precision, compile_, channels_last, batch, device)
    configure_backends(tf32=precision == 'tf32')
    torch.manual_seed(0)
    teacher = build_denoiser(spec)
    nets = [prepare(copy.deepcopy(teacher), device, channels_last, compile_) for _ in range(3)]
    kw = spec['network_kwargs']
    shape = (kw['in_channels'], kw['img_resolution'], kw['img_resolution'])
    label_dim = kw.get('label_dim', 0)
    cfg = DistillConfig(method=method, batch=batch, g_warmup_images=0, gan_start_images=0)
    batches = RandomImages(label_dim, batch, shape, device) if method != 'sid' else LabelBatches(label_dim, batch, 0, 0, 1, device)
    autocast = torch.bfloat16 if precision == 'bf16' else None
    return Distiller(cfg, nets[0], nets[1].requires_grad_(True), nets[2].requires_grad_(True), batches, shape,
                     device=device, autocast_dtype=autocast)


def count_iteration_flops(spec, method, batch, device):
    from torch.utils.flop_counter import FlopCounterMode
    d = build_distiller(spec, method, 'fp32', False, False, batch, device)
    d.iteration()                                  # the first iteration may differ (lazy state); count the second
    with FlopCounterMode(display=False) as counter:
        d.iteration()
    return int(counter.get_total_flops())


def measure(name, network, batch, iters, device, warmup=3, flops_per_iteration=None, peak=None, ready=None):
    """One configuration's row. `ready(distiller)`, if given, runs between warm-up and timing (to wait for the GPU, profile)."""
    from bench.record import percentiles, time_runs
    method, precision, compile_, channels_last = CONFIGS[name]
    spec = NETWORKS[network][0]()
    cuda = torch.device(device).type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    d = build_distiller(spec, method, precision, compile_, channels_last, batch, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(warmup):
        d.iteration()
    sync()
    warmup_s = time.perf_counter() - start
    if ready is not None:
        ready(d)
    times = time_runs(d.iteration, iters, sync)
    per_iter = sum(times) / len(times)
    images_per_s = batch / per_iter
    row = {'kind': 'train', 'backend': name, 'method': method, 'precision': precision, 'compile': compile_,
           'channels_last': channels_last, 'network': network, 'batch': batch, 'device': str(device), 'runs': len(times),
           'images_per_s': images_per_s, **percentiles(times),
           'peak_gpu_memory_mib': torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None, 'warmup_s': round(warmup_s, 3),
           'flops_per_iteration': flops_per_iteration,
           'flops_per_image': flops_per_iteration / batch if flops_per_iteration else None,
           'mfu': flops_per_iteration / per_iter / (peak * 1e12) if flops_per_iteration and peak else None}
    del d
    if cuda:
        torch.cuda.empty_cache()
    if compile_:
        torch._dynamo.reset()
    return row


def run_train(configs, network='ddpmpp-cifar10', batch=128, iters=20, warmup=3, device=None, peak_override=None, log=print):
    """Measure each configuration (failures are recorded as rows, not raised); returns (machine, settings, rows)."""
    from bench.flops import peak_for
    from bench.record import machine
    if network not in NETWORKS:
        raise ValueError(f'unknown network {network!r}; choose from {", ".join(NETWORKS)}')
    for name in configs:
        if name not in CONFIGS:
            raise ValueError(f'unknown configuration {name!r}; choose from {", ".join(CONFIGS)}')
        if (CONFIGS[name][0] == 'sid-lsg') != (network in LATENT_NETWORKS):
            raise ValueError(f'configuration {name!r} does not run on network {network!r}: the lsg-* configurations take '
                             f'{" or ".join(LATENT_NETWORKS)}, the others the EDM networks')
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    gpu = torch.device(device).type == 'cuda'
    info = machine(gpu)
    peak, peak_source = peak_for(info, gpu, peak_override)
    flops, rows = {}, []
    for name in configs:
        method = CONFIGS[name][0]
        try:
            if method not in flops:
                flops[method] = count_iteration_flops(NETWORKS[network][0](), method, batch, device)
            row = measure(name, network, batch, iters, device, warmup, flops[method], peak)
        except Exception as e:   # keep measuring the others; the failure is recorded, not hidden
            row = {'kind': 'train', 'backend': name, 'batch': batch, 'device': str(device), 'error': f'{type(e).__name__}: {e}'[:1000]}
            if gpu:
                torch.cuda.empty_cache()
        rows.append(row)
        if 'error' in row:
            log(f'{name}: error ({row["error"]})')
        else:
            mem = f', {row["peak_gpu_memory_mib"] / 1024:.1f} GiB' if row['peak_gpu_memory_mib'] else ''
            util = f', MFU {100 * row["mfu"]:.1f}%' if row['mfu'] is not None else ''
            log(f'{name:>18}: {row["images_per_s"]:8.1f} generator img/s, {row["p50_ms"]:.1f} ms/iteration{mem}{util}')
    return info, train_settings(network, batch, iters, warmup, configs, device, peak, peak_source), rows


def train_settings(network, batch, iters, warmup, configs, device, peak, peak_source):
    """The `settings` record of a training-throughput result file."""
    return {'network': NETWORKS[network][1], 'network_preset': network, 'per_device_batch': batch, 'timed_iterations': iters,
            'warmup_iterations': warmup, 'configs': list(configs), 'device': device,
            'iteration': 'one fake-score update + one generator update (+ EMA), random weights',
            'peak_tflops_bf16_dense': peak, 'peak_source': peak_source,
            'flops_counter': 'torch.utils.flop_counter.FlopCounterMode on one eager fp32 iteration of the same method'}
