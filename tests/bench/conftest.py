import json

import pytest
from click.testing import CliRunner

from bench.cli import bench
from models.architecture import build_denoiser
from models.bundle import save_bundle
from models.generator import OneStepGenerator
from tests.conftest import perturb_, tiny_ddpmpp

LABELS = {'kind': 'class', 'labels': [f'c{i}' for i in range(10)]}


def make_bundle(path, seed=0, provenance=None):
    """A tiny class-conditional DDPM++ (16x16, 16 channels): fast enough to export and time in seconds."""
    import torch
    torch.manual_seed(seed)
    spec = tiny_ddpmpp(augment_dim=0)
    save_bundle(path, OneStepGenerator(perturb_(build_denoiser(spec), 0.05, seed)), name=f'tiny-{seed}', architecture=spec,
                condition=LABELS, provenance=provenance)
    return path


def invoke(*args):
    result = CliRunner().invoke(bench, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def only_json(out):
    files = list(out.glob('*/*.json'))
    assert len(files) == 1, files
    return files[0], json.loads(files[0].read_text())


@pytest.fixture(scope='session')
def tiny_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp('bench') / 'tiny')


@pytest.fixture(scope='session')
def generate_run(tiny_bundle, tmp_path_factory):
    """One real `sida bench generate` run, shared by the tests that read its JSON and by the report test."""
    out = tmp_path_factory.mktemp('results')
    invoke('generate', '--bundle', tiny_bundle, '--backends', 'torch-fp32,onnxruntime,tensorrt', '--batch', '1,2', '--runs', '2',
           '--warmup', '1', '--warmup-seconds', '0.2', '--peak-tflops', '0.5', '--out', out, '--name', 'tiny')
    path, result = only_json(out)
    return out, path, result
