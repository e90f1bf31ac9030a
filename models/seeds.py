"""Seeds -> noise and labels, the one way every backend draws them.

Each image's noise comes from its own CPU torch.Generator seeded with the image's seed, so one
seed gives the same image on every backend, batch size and machine (up to numerics).
"""

import torch

SEED_MAX = 2 ** 63 - 1
MAX_SEEDS = 1_000_000          # images one seed list may name (`sida generate --seeds`)


def checked_seeds(seeds):
    """The seeds as ints, each in 0..SEED_MAX (ValueError names the first that is not)."""
    seeds = [int(seed) for seed in seeds]
    for seed in seeds:
        if not 0 <= seed <= SEED_MAX:
            raise ValueError(f'seed {seed} out of range 0..{SEED_MAX}')
    return seeds


def noise_for_seeds(seeds, shape):
    """[len(seeds), *shape] standard normal float32, one CPU generator per seed, drawn into one tensor."""
    seeds = checked_seeds(seeds)
    generator = torch.Generator()        # re-seeding resets it fully (state and cached normals): as good as a new one
    out = torch.empty(len(seeds), *shape)
    for row, seed in zip(out, seeds):
        torch.randn(*shape, generator=generator.manual_seed(seed), out=row)
    return out


def slerp(a, b, t):
    """Spherical interpolation from noise a to noise b ([N, ...]) at t in [0, 1], per image (a seed walk).

    Two independent Gaussian draws are nearly orthogonal with nearly equal norms; a linear mix would shrink the
    norm (to ~0.71x at t=0.5), noise the generator never saw. Slerp stays on that shell; t=0 gives a exactly, t=1 b.
    """
    a64, b64 = a.flatten(1).double(), b.flatten(1).double()
    cos = (a64 * b64).sum(1) / (a64.norm(dim=1) * b64.norm(dim=1)).clamp_min(1e-12)
    omega = cos.clamp(-1, 1).acos()
    sin = omega.sin()
    parallel = sin < 1e-6              # (anti)parallel: the great circle is undefined, mix linearly
    sin = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, torch.full_like(sin, 1 - t), ((1 - t) * omega).sin() / sin)
    wb = torch.where(parallel, torch.full_like(sin, t), (t * omega).sin() / sin)
    return (wa[:, None] * a64 + wb[:, None] * b64).view(a.shape).to(a.dtype)


def labels_for_seeds(seeds, num_classes):
    """A class per seed when the user names none: drawn from a generator seeded by the seed (after its noise stream)."""
    generator = torch.Generator()
    draws = [torch.randint(num_classes, (1,), generator=generator.manual_seed(int(s) ^ 0x5EED)) for s in seeds]
    return torch.cat(draws) if draws else torch.empty(0, dtype=torch.int64)


def parse_seeds(text):
    """'0-63', '1,5,9', '0-3,10' -> list of ints (ranges inclusive)."""
    seeds = []
    for part in str(text).split(','):
        part = part.strip()
        if not part:
            continue
        try:
            if '-' in part:
                lo, hi = (int(x) for x in part.split('-', 1))
                if hi < lo:
                    raise ValueError
                if len(seeds) + hi - lo + 1 > MAX_SEEDS:          # counted before the list is built
                    raise OverflowError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except OverflowError:
            raise ValueError(f'seed list {text!r} names more than {MAX_SEEDS:,} images; generate them in parts') from None
        except ValueError:
            raise ValueError(f'bad seed list {text!r}: use numbers and inclusive ranges like 0-63 or 1,5,9') from None
    if not seeds:
        raise ValueError(f'bad seed list {text!r}: no seeds')
    return checked_seeds(seeds)


def example_inputs(config, batch, seed=0, text_embeds=None):
    """The contract's inputs for `batch` images from seeds seed..seed+batch-1: classes cycle through the labels;
    text models get `text_embeds` ([batch, 1 + max_tokens, dim]) or all-padding zeros (shapes, not prompts).
    The one set of example inputs for the parity gate, warm-up and benchmarks."""
    inputs = {'noise': noise_for_seeds(range(seed, seed + batch), (config.channels, config.resolution, config.resolution))}
    kind = config.condition['kind']
    if kind == 'class':
        inputs['class_labels'] = torch.arange(batch, dtype=torch.int64) % len(config.label_names)
    elif kind == 'text':
        c = config.condition
        inputs['text_embeds'] = text_embeds if text_embeds is not None else torch.zeros(batch, 1 + c['max_tokens'], c['dim'])
    return inputs
