"""Seeds -> noise and labels are the one rule every backend and every past image depends on: the faster draws must
give exactly the bits the original per-seed code gave."""

import random

import pytest
import torch

from models.seeds import SEED_MAX, labels_for_seeds, noise_for_seeds


def reference_noise(seeds, shape):
    """The original: a fresh generator per seed, one randn each."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def reference_labels(seeds, num_classes):
    """The original: one randint of one value per seed, made a Python int."""
    generator = torch.Generator()
    return torch.tensor([int(torch.randint(num_classes, (1,), generator=generator.manual_seed(int(s) ^ 0x5EED)))
                         for s in seeds], dtype=torch.int64)


def seed_lists():
    rng = random.Random(0)
    edges = [0, 1, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 32, 2 ** 62, SEED_MAX - 15]
    lists = [[s] for s in edges] + [list(range(s, s + 16)) for s in edges]
    lists += [[rng.randrange(SEED_MAX + 1) for _ in range(n)] for n in (1, 2, 3, 7, 16, 16, 33) for _ in range(4)]
    return lists


@pytest.mark.parametrize('shape', [(3, 16, 16), (3, 32, 32), (4, 64, 64), (3, 8, 8), (1, 3, 5)])
def test_noise_is_bit_identical_to_one_generator_per_seed(shape):
    for seeds in seed_lists():
        noise = noise_for_seeds(seeds, shape)
        assert noise.shape == (len(seeds), *shape) and noise.dtype == torch.float32
        assert torch.equal(noise, reference_noise(seeds, shape)), (seeds, shape)


@pytest.mark.parametrize('num_classes', [1, 2, 10, 100, 1000, 2 ** 31])
def test_labels_are_identical_to_the_original_draws(num_classes):
    for seeds in seed_lists():
        labels = labels_for_seeds(seeds, num_classes)
        assert labels.dtype == torch.int64 and labels.shape == (len(seeds),)
        assert torch.equal(labels, reference_labels(seeds, num_classes)), (seeds, num_classes)


def test_seeds_as_ranges_and_bad_seeds():
    assert torch.equal(noise_for_seeds(range(5, 9), (3, 4, 4)), reference_noise(range(5, 9), (3, 4, 4)))
    assert noise_for_seeds([], (3, 4, 4)).shape == (0, 3, 4, 4) and labels_for_seeds([], 10).shape == (0,)
    for bad in (-1, SEED_MAX + 1):
        with pytest.raises(ValueError, match='out of range'):
            noise_for_seeds([0, bad], (3, 4, 4))
