"""`--bundle preset:NAME`: a randomly initialised bundle of a reference architecture, for speed only.

Speed does not depend on the weights, so before a trained model of an architecture exists its latency,
throughput and FLOPs can be measured on random weights of exactly that network. The bundle says so in
its name (`random-...`) and provenance, and is written once under `build/bench-bundles/` and reused.
"""

from pathlib import Path

import torch

from models.architecture import adm, build_denoiser, ddpmpp, ncsnpp
from models.bundle import BundleError, save_bundle, validate_bundle
from models.demo import CIFAR10_CLASSES, tiny_spec
from models.generator import OneStepGenerator

PREFIX = 'preset:'
WORK_DIR = Path('build') / 'bench-bundles'
PRESETS = {
    'ddpmpp-cifar10': (lambda: ddpmpp(label_dim=10), CIFAR10_CLASSES, 'EDM DDPM++ CIFAR-10 cond. (55.7M params)'),
    'ncsnpp-cifar10': (lambda: ncsnpp(label_dim=10), CIFAR10_CLASSES, 'EDM NCSN++ CIFAR-10 cond. (56.4M params)'),
    'adm-imagenet64': (lambda: adm(), [f'class{i}' for i in range(1000)], 'EDM ADM ImageNet-64 cond. (296M params)'),
    'demo': (tiny_spec, CIFAR10_CLASSES, 'the small untrained demo network (models/demo.py)'),
}
# Latent text-to-image stand-ins (models/random_sd.py): the one-step generator of a random SD-shaped pipeline.
LATENT_PRESETS = {
    'sd15-512': ('sd15', 'Stable Diffusion 1.5 shapes: 860M-param UNet, 64x64x4 latents, VAE decoder to 512x512'),
    'tiny-sd': ('tiny', 'a tiny SD-shaped pipeline (8x8x4 latents, 16x16 images)'),
}


def resolve_bundle(spec, work_dir=WORK_DIR, log=print):
    """A bundle directory: `spec` itself, or the preset's random bundle (built on first use)."""
    spec = str(spec)
    if not spec.startswith(PREFIX):
        return Path(spec)
    name = spec[len(PREFIX):]
    if name not in PRESETS and name not in LATENT_PRESETS:
        raise ValueError(f'unknown preset {name!r}; choose one of {", ".join([*PRESETS, *LATENT_PRESETS])}')
    path = Path(work_dir) / name
    try:
        validate_bundle(path)
        return path
    except BundleError:
        pass
    if name in LATENT_PRESETS:
        return _latent_bundle(name, path, log)
    make, labels, what = PRESETS[name]
    log(f'building a randomly initialised {what} bundle in {path} (for speed measurements only)')
    torch.manual_seed(0)
    architecture = make()
    denoiser = build_denoiser(architecture)
    with torch.no_grad():   # EDM zero-initialises output layers; perturb them so outputs depend on the input, as in models/demo.py
        for p in denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_bundle(path, OneStepGenerator(denoiser, init_sigma=2.5), name=f'random-{name}', architecture=architecture,
                condition={'kind': 'class', 'labels': list(labels)},
                provenance={'method': 'none (random init): a stand-in for speed measurements', 'preset': name, 'network': what,
                            'seed': 0})
    return path


def _latent_bundle(name, path, log):
    from models.diffusers_teacher import load_unet_denoiser, load_vae
    from models.random_sd import write_random_sd
    from models.text_encoder import ClipTextEncoder
    config, what = LATENT_PRESETS[name]
    log(f'building a randomly initialised {what} bundle in {path} (for speed measurements only)')
    pipeline = write_random_sd(path.with_name(path.name + '-pipeline'), config)
    denoiser, architecture = load_unet_denoiser(pipeline)
    encoder = ClipTextEncoder(pipeline)
    save_bundle(path, OneStepGenerator(denoiser, init_sigma=float(denoiser.sigma_at(625))), name=f'random-{name}',
                architecture=architecture, vae=load_vae(pipeline), text_encoder_from=pipeline, dtype='float16',
                condition={'kind': 'text', 'encoder': 'clip:.', 'dim': encoder.dim, 'max_tokens': encoder.max_tokens},
                provenance={'method': 'none (random init): a stand-in for speed measurements', 'preset': name, 'network': what,
                            'seed': 0})
    return path
