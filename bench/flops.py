"""Model FLOP utilisation: FLOPs counted by PyTorch, divided by the device's peak dense bf16 rate.

FLOPs are counted with torch.utils.flop_counter on a copy of the network built on the `meta` device
(shapes only, no arithmetic), so counting a 256-image batch of a 56M-parameter UNet costs nothing.
Utilisation is always against the bf16 dense peak, also for fp32 runs: it says how much of the
chip's best dense rate a configuration uses, whatever its precision.
"""

import re

import torch
from torch.utils.flop_counter import FlopCounterMode

# NVIDIA datasheet peaks, dense (no 2:4 sparsity), bf16 tensor cores, TFLOP/s; first match wins.
PEAK_BF16_DENSE_TFLOPS = (
    (r'H100.*PCIe', 756.0),
    (r'H100.*NVL', 835.0),
    (r'H100|H800', 989.0),       # SXM
    (r'H200', 989.0),
    (r'A100', 312.0),
    (r'\bL4\b', 121.0),
)


def peak_tflops(device_name, override=None):
    """(TFLOP/s, where the number comes from) or (None, reason)."""
    if override is not None:
        return float(override), 'given with --peak-tflops'
    for pattern, value in PEAK_BF16_DENSE_TFLOPS:
        if device_name and re.search(pattern, device_name):
            return value, f'datasheet bf16 dense peak for {pattern!r}'
    return None, f'no known bf16 peak for {device_name!r}: pass --peak-tflops to get MFU'


def peak_for(info, gpu, override=None):
    """The peak MFU is measured against: the GPU's (looked up or given); on CPU only a given one."""
    if gpu or override is not None:
        return peak_tflops(info['device'], override)
    return None, 'no MFU on CPU unless --peak-tflops is given'


def count_flops(module, *args, **kwargs):
    """Total FLOPs of one call (a multiply-add counts 2), as torch.utils.flop_counter counts them."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return int(counter.get_total_flops())


def meta_inputs(config, batch):
    """The generator's inputs for `config` (a bundle config) as meta tensors."""
    inputs = {'noise': torch.empty(batch, config.channels, config.resolution, config.resolution, device='meta')}
    kind = config.condition['kind']
    if kind == 'class':
        inputs['class_labels'] = torch.zeros(batch, dtype=torch.int64, device='meta')
    elif kind == 'text':
        inputs['text_embeds'] = torch.empty(batch, 1 + config.condition['max_tokens'], config.condition['dim'], device='meta')
    return inputs


def meta_generator(config):
    """The bundle's generator built on the meta device (shapes only), a latent one with its VAE decoder."""
    from models.architecture import build_denoiser
    from models.bundle import build_vae
    from models.generator import OneStepGenerator, VaeDecoder
    decoder = None
    if config.latent:
        decoder = VaeDecoder(build_vae(config.space['vae_config'], device='meta'), config.space['scaling_factor'],
                             config.space.get('shift_factor'))
    with torch.device('meta'):
        generator = OneStepGenerator(build_denoiser(config.architecture), init_sigma=config.init_sigma, decoder=decoder)
    return generator.to('meta').eval()          # buffers computed on the CPU at build (a noise schedule) too


def generator_flops(config, batch):
    """FLOPs of one generator call on `batch` images of the bundle's architecture (a latent one's decoder included)."""
    return count_flops(meta_generator(config), **meta_inputs(config, batch))


def denoiser_flops(spec, batch, text_tokens=1):
    """FLOPs of one denoiser evaluation D(x; sigma) of an architecture spec (a teacher's sampling step)."""
    from models.architecture import build_denoiser
    with torch.device('meta'):
        denoiser = build_denoiser(spec).eval()
    kw = spec['network_kwargs']
    x = torch.empty(batch, kw['in_channels'], kw['img_resolution'], kw['img_resolution'], device='meta')
    cond = {}
    if kw.get('label_dim'):
        cond['class_labels'] = torch.zeros(batch, kw['label_dim'], device='meta')
    if kw.get('text_dim'):
        cond['text_embeds'] = torch.empty(batch, 1 + text_tokens, kw['text_dim'], device='meta')
    return count_flops(denoiser, x, torch.ones(batch, device='meta'), **cond)


def mfu(flops_per_image, images_per_s, peak):
    if not flops_per_image or not peak:
        return None
    return flops_per_image * images_per_s / (peak * 1e12)
