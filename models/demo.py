"""A small, *untrained* demo bundle (CIFAR-10 class names, tiny DDPM++), made reproducibly from a seed.

It exists so the CLI and tests have a real bundle to run before trained zoo models ship; its images
are structured noise. Usage: python -m models.demo OUT_DIR
"""

import sys

import torch

from models.architecture import build_denoiser, ddpmpp
from models.bundle import save_bundle
from models.generator import OneStepGenerator

CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def tiny_spec(label_dim=10, text_dim=0, resolution=32):
    return ddpmpp(resolution=resolution, label_dim=label_dim, text_dim=text_dim, model_channels=16,
                  channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(16,), dropout=0.0, augment_dim=0)


def make_demo_bundle(path, seed=0):
    torch.manual_seed(seed)
    spec = tiny_spec()
    denoiser = build_denoiser(spec)
    with torch.no_grad():  # EDM zero-initialises output layers; perturb them so the net's output depends on its input
        for p in denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    generator = OneStepGenerator(denoiser, init_sigma=2.5)
    return save_bundle(path, generator, name='demo-untrained-ddpmpp', architecture=spec,
                       condition={'kind': 'class', 'labels': CIFAR10_CLASSES},
                       provenance={'method': 'none (random init, untrained)', 'seed': seed})


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: python -m models.demo OUT_DIR')
    config = make_demo_bundle(sys.argv[1])
    print(f'wrote demo bundle {config.name!r} to {sys.argv[1]}')
