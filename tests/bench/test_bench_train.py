"""`sida bench train` measures the real Distiller (here a tiny network on CPU)."""

from tests.bench.conftest import invoke, only_json
from tests.conftest import tiny_ddpmpp


def test_train_rows_carry_images_per_s_latency_and_flops(tmp_path, monkeypatch):
    import train.throughput as throughput
    monkeypatch.setitem(throughput.NETWORKS, 'demo', (lambda: tiny_ddpmpp(augment_dim=0, attn_resolutions=()), 'tiny test net'))
    invoke('train', '--network', 'demo', '--config', 'fp32,sida-fp32', '--batch', 2, '--iters', 2, '--warmup', 1, '--device', 'cpu',
           '--out', tmp_path)
    path, result = only_json(tmp_path)
    assert path.name.endswith('-train-throughput-demo.json') and path.with_suffix('.png').is_file()
    assert [r['backend'] for r in result['results']] == ['fp32', 'sida-fp32']
    for row in result['results']:
        assert row['kind'] == 'train' and row['batch'] == 2 and row['runs'] == 2
        assert row['images_per_s'] > 0 and row['p50_ms'] <= row['p99_ms'] and row['flops_per_image'] > 0
        assert row['mfu'] is None and row['peak_gpu_memory_mib'] is None          # CPU, no --peak-tflops
    assert result['results'][1]['method'] == 'sida'
    assert result['settings']['network'] == 'tiny test net'


def test_sid_lsg_rows_on_an_sd_shaped_unet(tmp_path):
    import pytest
    pytest.importorskip('diffusers', reason='the [t2i] extra is not installed')
    invoke('train', '--network', 'tiny-sd', '--config', 'lsg-fp32', '--batch', 2, '--iters', 2, '--warmup', 1, '--device', 'cpu',
           '--out', tmp_path)
    _, result = only_json(tmp_path)
    (row,) = result['results']
    assert row['method'] == 'sid-lsg' and row['images_per_s'] > 0 and row['flops_per_image'] > 0
    assert 'error' not in row
