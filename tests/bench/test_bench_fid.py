"""`sida bench fid-weights` (the rounded Inception copy) and `sida bench fid-rounding` (what rounding costs), on a
stand-in feature network where the real one would take minutes on CPU."""

import json

import pytest
import torch

from bench.fid_weights import measure_rounding, noisy
from bench.report import render
from tests.bench.conftest import invoke
from train.metrics import INT8_SCALES, InceptionFeatures


class StandIn(torch.nn.Module):
    """Inception's interface (3x299x299 in [-1, 1] -> [N, D]) in a few thousand weights."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4)
        self.proj = torch.nn.Linear(16, 32)

    def forward(self, x):
        return self.proj(self.conv(x).relu().mean(dim=(2, 3))).relu()


def stand_in(path):
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(StandIn()), str(path))
    return path


def test_fid_weights_writes_a_rounded_copy_that_loads_in_fp32(tmp_path):
    source = stand_in(tmp_path / 'full.pt')
    out = tmp_path / 'out' / 'bf16.pt'
    result = invoke('fid-weights', out, '--dtype', 'bf16', '--source', source)
    assert f'wrote {out}' in result.output and '--fid-weights' in result.output
    raw = torch.jit.load(str(out))
    assert raw.conv.weight.dtype == torch.bfloat16 and raw.conv.bias.dtype == torch.float32     # vectors stay fp32
    features = InceptionFeatures(out)
    assert features.rounding['dtype'] == 'bf16' and {p.dtype for p in features.net.parameters()} == {torch.float32}
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(features(images), InceptionFeatures(source)(images), rtol=0.05, atol=0.05)


def test_fid_weights_int8_stores_int8_kernels_and_scales_and_loads_dequantized(tmp_path):
    source = stand_in(tmp_path / 'full.pt')
    out = tmp_path / 'int8.pt'
    result = invoke('fid-weights', out, '--dtype', 'int8', '--source', source)
    assert f'wrote {out}' in result.output and 'gzipped' in result.output and 'in int8' in result.output
    extra = {INT8_SCALES: ''}
    raw = torch.jit.load(str(out), _extra_files=extra)
    assert raw.conv.weight.dtype == raw.proj.weight.dtype == torch.int8 and raw.conv.bias.dtype == torch.float32
    assert raw.conv.weight.abs().amax(dim=(1, 2, 3)).eq(127).all()          # each output channel's largest |w| -> 127
    full = torch.jit.load(str(source))
    features = InceptionFeatures(out)
    assert features.rounding['dtype'] == 'int8' and {p.dtype for p in features.net.parameters()} == {torch.float32}
    for name in ('conv', 'proj'):
        w, dq = getattr(full, name).weight, getattr(features.net, name).weight
        step = w.flatten(1).abs().amax(1) / 127                              # per output channel
        assert ((dq - w).flatten(1).abs() <= step[:, None] / 2 + 1e-7).all()   # off by at most half a step
    torch.testing.assert_close(features.net.conv.bias, full.conv.bias, rtol=0, atol=0)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(features(images), InceptionFeatures(source)(images), rtol=0.05, atol=0.05)


def test_an_int8_copy_without_its_scales_is_refused(tmp_path):
    source = stand_in(tmp_path / 'full.pt')
    invoke('fid-weights', tmp_path / 'int8.pt', '--dtype', 'int8', '--source', source)
    meta = {'sida_rounding.json': ''}
    net = torch.jit.load(str(tmp_path / 'int8.pt'), _extra_files=meta)
    torch.jit.save(net, str(tmp_path / 'bare.pt'), _extra_files=meta)         # the metadata, not the scales
    with pytest.raises(ValueError, match='without its sida_int8_scales.pt'):
        InceptionFeatures(tmp_path / 'bare.pt')


def test_fid_rounding_rows_compare_each_rounded_copy_with_full_weights(tmp_path):
    from tests.train.conftest import CIFAR_TAR
    settings, rows = measure_rounding(CIFAR_TAR, n=4, noise=30, source=stand_in(tmp_path / 'full.pt'), log=lambda m: None)
    assert settings['sets'] == {'test': 4, 'train': 4, 'train+noise': 4} and settings['source_weights'] == 'full.pt'
    assert [r['weights'] for r in rows] == ['fp32', 'fp16', 'bf16', 'int8'] and all(r['kind'] == 'fid-rounding' for r in rows)
    full, fp16, bf16, int8 = rows
    for r in (fp16, bf16, int8):
        assert r['fid_test_vs_train_delta'] == r['fid_test_vs_train'] - full['fid_test_vs_train']
        assert 0 < r['feature_rel_error_mean'] <= r['feature_rel_error_max'] < 0.05 and r['fid_same_images_vs_fp32'] >= -1e-9
        assert 0 <= r['file_mb_gzip'] <= r['file_mb'] + 0.1
    assert fp16['feature_rel_error_mean'] < bf16['feature_rel_error_mean']          # 10 mantissa bits against 7
    # the report shows them
    (tmp_path / 'results' / 'cpu-x').mkdir(parents=True)
    (tmp_path / 'results' / 'cpu-x' / '2026-01-01-fid-rounding-4.json').write_text(json.dumps(
        {'name': 'fid-rounding-4', 'device': 'CPU: x', 'date': '2026-01-01', 'settings': settings, 'results': rows}))
    text = render(tmp_path / 'results', tmp_path / 'README.md')
    assert '| Inception weights | file MB | gzipped MB | FID test vs train |' in text and text.count('| int8 |') == 1


def test_noisy_images_stay_uint8_and_differ():
    images = torch.full((2, 3, 8, 8), 250, dtype=torch.uint8)
    out = noisy(images, 16)
    assert out.dtype == torch.uint8 and out.max() == 255 and (out != images).any() and torch.equal(noisy(images, 16), out)
