"""Teacher loaders: every loader takes a local path; nothing is downloaded.

- an EDM / SiD network pickle (`*.pkl`), read by the restricted unpickler (no embedded code runs);
- a sida bundle or training checkpoint directory (both hold sida.json + generator.safetensors);
- a diffusers Stable-Diffusion directory (unet/ ... scheduler/): its UNet as an EDM denoiser (the [t2i] extra).
Returns (denoiser in eval mode with frozen weights, architecture spec).
"""

from pathlib import Path

from models.bundle import CONFIG_FILE, load_bundle
from models.edm_pickle import load_edm_pickle


def load_teacher(path, device='cpu'):
    path = Path(path)
    if path.is_file() and path.suffix == '.pkl':
        denoiser, spec = load_edm_pickle(path)
        return denoiser.to(device), spec
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        bundle = load_bundle(path, device=device)
        return bundle.generator.denoiser, bundle.config.architecture
    from models.diffusers_teacher import is_diffusers_dir, load_unet_denoiser
    if is_diffusers_dir(path):
        denoiser, spec = load_unet_denoiser(path, device)
        return denoiser.eval().requires_grad_(False), spec
    raise FileNotFoundError(f'{path}: not a teacher; expected an EDM/SiD network pickle (.pkl), a sida bundle/checkpoint directory '
                            'or a diffusers Stable-Diffusion directory')
