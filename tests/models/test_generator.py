import pytest
import torch

from models.architecture import build_denoiser
from models.generator import OneStepGenerator, to_uint8_nhwc
from models.seeds import labels_for_seeds, noise_for_seeds, parse_seeds
from tests.conftest import perturb_, tiny_ddpmpp


def _generator(**kw):
    return OneStepGenerator(perturb_(build_denoiser(tiny_ddpmpp(**kw))), init_sigma=2.5).eval()


def test_io_contract_uint8_nhwc_and_float():
    g = _generator()
    g.return_float = True
    noise = torch.randn(3, 3, 16, 16)
    images, images_float = g(noise, torch.tensor([0, 4, 9]))
    assert images.shape == (3, 16, 16, 3) and images.dtype == torch.uint8
    assert images_float.shape == (3, 3, 16, 16) and images_float.dtype == torch.float32
    assert images_float.min() >= -1 and images_float.max() <= 1
    torch.testing.assert_close(images, to_uint8_nhwc(images_float))


def test_generator_is_the_denoiser_at_init_sigma():
    g = _generator()
    noise, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    expected = g.denoiser(2.5 * noise, torch.full((2,), 2.5), torch.nn.functional.one_hot(labels, 10).float())
    torch.testing.assert_close(g.denoise(noise, labels), expected)
    torch.testing.assert_close(g.denoise(noise, torch.nn.functional.one_hot(labels, 10).float()), expected)


def test_quantisation_convention():
    x = torch.tensor([-1.5, -1.0, -0.0039, 0.0, 0.5, 1.0, 2.0]).reshape(1, 1, 1, 7)
    assert to_uint8_nhwc(x)[0, 0, :, 0].tolist() == [0, 0, 127, 128, 191, 255, 255]
    assert to_uint8_nhwc(x).shape == (1, 1, 7, 3)     # grey repeated to RGB


def test_missing_condition_is_a_clear_error():
    with pytest.raises(ValueError, match='class_labels'):
        _generator()(torch.randn(1, 3, 16, 16))


def test_seeded_noise_is_independent_of_batching():
    batch = noise_for_seeds([3, 7, 11], (3, 8, 8))
    torch.testing.assert_close(noise_for_seeds([7], (3, 8, 8))[0], batch[1])
    assert not torch.equal(batch[0], batch[1])
    assert labels_for_seeds([3, 7, 11], 10).tolist() == labels_for_seeds([3, 7, 11], 10).tolist()


def test_parse_seeds():
    assert parse_seeds('0-3,10') == [0, 1, 2, 3, 10]
    for bad in ['', 'a', '5-2', '-1']:
        with pytest.raises(ValueError):
            parse_seeds(bad)
    with pytest.raises(ValueError, match='names more than 1,000,000 images'):      # refused before a list is built
        parse_seeds('0-99999999999')
    assert len(parse_seeds('0-999999')) == 1_000_000


def test_torch_export_traces_the_generator_with_dynamic_batch():
    g = _generator()
    noise, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    batch = torch.export.Dim('batch', min=1, max=1024)
    program = torch.export.export(g, (noise, labels), dynamic_shapes=({0: batch}, {0: batch}))
    noise4, labels4 = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(program.module()(noise4, labels4), g(noise4, labels4))
