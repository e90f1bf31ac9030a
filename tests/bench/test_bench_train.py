"""`sida bench train` measures the real Distiller (here a tiny network on CPU)."""

from tests.bench.conftest import invoke, only_json
from tests.conftest import tiny_ddpmpp


def test_train_rows_carry_images_per_s_latency_and_flops(tmp_path, monkeypatch):
    import bench.train_throughput as throughput
    monkeypatch.setitem(throughput.NETWORKS, 'demo', (lambda: tiny_ddpmpp(augment_dim=0, attn_resolutions=()), 'tiny test net'))
    invoke('train', '--network', 'demo', '--variants', 'fp32,sida-fp32', '--batch', 2, '--iters', 2, '--warmup', 1, '--device', 'cpu',
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
    invoke('train', '--network', 'tiny-sd', '--variants', 'lsg-fp32', '--batch', 2, '--iters', 2, '--warmup', 1, '--device', 'cpu',
           '--out', tmp_path)
    _, result = only_json(tmp_path)
    (row,) = result['results']
    assert row['method'] == 'sid-lsg' and row['images_per_s'] > 0 and row['flops_per_image'] > 0
    assert 'error' not in row


def test_variants_compile_side_by_side_and_are_timed_one_at_a_time(tmp_path):
    """bench/train_variants.py: one process per variant, inductor overrides recorded, rows in the bench format."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, '-m', 'bench.train_variants', str(tmp_path), 'variants-smoke',
                          'fp32,bf16+conv_1x1_as_mm=0,no-such-config'], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 2 and 'unknown configuration' in out.stderr        # refused before anything runs
    out = subprocess.run([sys.executable, '-m', 'bench.train_variants', str(tmp_path), 'variants-smoke',
                          'fp32,bf16+conv_1x1_as_mm=0', '--network', 'demo', '--device', 'cpu', '--batch', '2', '--iters', '2',
                          '--profile', 'fp32'], capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = tmp_path.glob('*/*-variants-smoke.json')
    rows = json.loads(path.read_text())['results']
    assert [r['backend'] for r in rows] == ['fp32', 'bf16+conv_1x1_as_mm=0']
    assert all(r['runs'] == 2 and r['images_per_s'] > 0 and 'error' not in r for r in rows)
    assert rows[1]['config'] == 'bf16' and rows[1]['inductor_options'] == {}        # eager: no compiler options apply
    assert (tmp_path / 'profile-fp32.txt').read_text().startswith('fp32: 2 iterations')
    assert (tmp_path / 'trace-fp32.json.gz').is_file()
