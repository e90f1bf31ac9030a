"""The non-leaking augmentation pipe (train/augment.py): what each label encodes, identity at p = 0, determinism."""

import math

import pytest
import torch

from train import augment
from train.augment import AUGMENT_DIM, PARAMS


def images(n=4, side=16, seed=0):
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def only(**values):
    """[1, 8] parameters with the named ones set and everything else untouched."""
    params = torch.zeros(1, len(PARAMS))
    for name, value in values.items():
        params[0, PARAMS.index(name)] = value
    return params


def test_shapes_and_labels():
    x = images(64)
    y, labels = augment.augment(x, 0.12, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype and labels.shape == (64, AUGMENT_DIM) and labels.dtype == torch.float32
    assert torch.isfinite(y).all() and set(labels[:, :2].unique().tolist()) <= {0.0, 1.0}
    untouched = (labels == 0).all(dim=1)
    flipped_only = (labels[:, 0] == 1) & (labels[:, 1:] == 0).all(dim=1)
    assert untouched.any() and flipped_only.any() and (~untouched & ~flipped_only).any()
    assert torch.equal(y[untouched], x[untouched])                   # zero labels: bit-exact, never resampled
    assert torch.equal(y[flipped_only], x[flipped_only].flip(3))


def test_p_zero_is_the_identity_and_draws_nothing():
    x, g = images(), torch.Generator().manual_seed(3)
    state = g.get_state()
    y, labels = augment.augment(x, 0.0, g)
    assert torch.equal(y, x) and torch.equal(labels, torch.zeros(4, AUGMENT_DIM))
    assert torch.equal(g.get_state(), state)                          # the caller's random stream is untouched


def test_the_same_generator_seed_gives_the_same_augmentation():
    x = images(32)
    a = augment.augment(x, 0.5, torch.Generator().manual_seed(7))
    b = augment.augment(x, 0.5, torch.Generator().manual_seed(7))
    c = augment.augment(x, 0.5, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_how_often_each_transform_is_drawn():
    params = augment.draw(20_000, 0.12, torch.Generator().manual_seed(0))
    on = (params != 0).float().mean(dim=0)
    expected = {'xflip': 0.5, 'yflip': 0.06, 'scale': 0.12, 'angle': 0.12, 'aniso': 0.12, 'aniso_angle': 0.5, 'tx': 0.12}
    for name, rate in expected.items():
        assert on[PARAMS.index(name)] == pytest.approx(rate, abs=0.015), name
    assert torch.equal(params[:, 6] != 0, params[:, 7] != 0)          # one draw moves both axes


def label(params):
    return augment.labels(params)[0]


def unit(*pairs):
    out = torch.zeros(AUGMENT_DIM)
    for index, value in pairs:
        out[index] = value
    return out


def test_flips_show_in_their_labels():
    x = images(1)
    assert torch.equal(augment.apply(x, only(xflip=1)), x.flip(3)) and torch.equal(label(only(xflip=1)), unit((0, 1)))
    assert torch.equal(augment.apply(x, only(yflip=1)), x.flip(2)) and torch.equal(label(only(yflip=1)), unit((1, 1)))


def test_translation_moves_content_by_its_label():
    x, step = images(1), 1 / (augment.TRANSLATE_STD * 16)             # one pixel of a 16-pixel image
    right = augment.apply(x, only(tx=step))
    torch.testing.assert_close(right[..., :, 1:], x[..., :, :-1], atol=1e-4, rtol=0)
    down = augment.apply(x, only(ty=step))
    torch.testing.assert_close(down[..., 1:, :], x[..., :-1, :], atol=1e-4, rtol=0)
    assert torch.allclose(label(only(tx=step)), unit((7, step))) and torch.allclose(label(only(ty=step)), unit((8, step)))


def test_rotation_by_a_quarter_turn():
    x = images(1)
    torch.testing.assert_close(augment.apply(x, only(angle=math.pi / 2)), torch.rot90(x, 1, (2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(label(only(angle=math.pi / 2)), unit((3, -1), (4, 1)), atol=1e-6, rtol=0)


def test_isotropic_and_anisotropic_scaling():
    """On a 15-pixel image (a pixel at the centre) halving the scale makes output pixel k read input pixel 2k."""
    x, c = images(1, side=15), 7
    w = -1 / augment.SCALE_STD                                          # log2 scale -1: half size
    small = augment.apply(x, only(scale=w))
    k = torch.arange(-3, 4)
    torch.testing.assert_close(small[0, :, c + k[:, None], c + k], x[0, :, c + 2 * k[:, None], c + 2 * k], atol=1e-4, rtol=0)
    assert torch.allclose(label(only(scale=w)), unit((2, w)))
    # Squeezed along x (axis angle 0), stretched along y; turned a quarter, the other way round.
    squeezed = augment.apply(x, only(aniso=w))
    torch.testing.assert_close(squeezed[0, :, c, c + k], x[0, :, c, c + 2 * k], atol=1e-4, rtol=0)
    turned = augment.apply(x, only(aniso=w, aniso_angle=math.pi / 2))
    torch.testing.assert_close(turned[0, :, c + k, c], x[0, :, c + 2 * k, c], atol=1e-4, rtol=0)
    torch.testing.assert_close(label(only(aniso=w)), unit((5, w)), atol=1e-6, rtol=0)
    torch.testing.assert_close(label(only(aniso=w, aniso_angle=math.pi / 2)), unit((6, w)), atol=1e-6, rtol=0)
