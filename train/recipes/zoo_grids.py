"""Sample grids for the zoo's model cards: one row per class (or prompt), one column per seed. Teachers (provenance
method edm-teacher) are sampled as the evaluation samples them: EDM Heun, 18 steps (35 network evaluations).

    python train/recipes/zoo_grids.py models/zoo/cifar10-cond models/zoo/cifar10-text models/zoo/cifar10-cond-teacher
"""

import sys
from pathlib import Path

import torch

from models.bundle import is_teacher, load_bundle
from models.generator import to_uint8_nhwc
from models.images import make_grid, save_png
from models.seeds import noise_for_seeds
from train.captions import DEMO_PROMPTS
from train.evaluate import teacher_fn

SEEDS = range(10)


def draw(bundle, noise, cond):
    """uint8 NHWC images: one step for a generator, the EDM Heun sampler (35 NFE) for a teacher."""
    generator = bundle.generator
    if not is_teacher(bundle.config):
        return generator(noise, **cond)
    if 'class_labels' in cond:
        cond = {'class_labels': generator.one_hot(cond['class_labels'])}
    return to_uint8_nhwc(teacher_fn(generator.denoiser, 18)(noise, cond).clamp(-1, 1))


def grid(bundle_dir):
    bundle = load_bundle(bundle_dir)
    c, shape = bundle.config, (bundle.config.channels, bundle.config.resolution, bundle.config.resolution)   # noise shape
    kind = c.condition['kind']
    rows = c.label_names if kind == 'class' else DEMO_PROMPTS if kind == 'text' else ['unconditional']
    noise = noise_for_seeds(SEEDS, shape)
    images = []
    with torch.inference_mode():
        for i, row in enumerate(rows):
            if kind == 'class':
                cond = {'class_labels': torch.full((len(SEEDS),), i, dtype=torch.int64)}
            elif kind == 'none':
                cond = {}
            else:
                from models.text_encoder import bundle_text_encoder
                enc = bundle_text_encoder(c).encode([row])
                cond = {'text_embeds': enc.expand(len(SEEDS), -1, -1)}
            images.append(draw(bundle, noise, cond))
    out = Path(bundle_dir) / 'samples.png'
    save_png(out, make_grid(torch.cat(images).numpy(), columns=len(SEEDS)),
             {'model': c.name, 'seeds': list(SEEDS), 'rows': list(rows)})
    print(f'wrote {out}: rows = {", ".join(rows)}')


if __name__ == '__main__':
    for path in sys.argv[1:]:
        grid(path)
