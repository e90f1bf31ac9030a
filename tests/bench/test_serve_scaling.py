"""`sida bench serve-scaling` over real `sida bench http` runs against real servers: one on a single device and one
with two replicas (`--devices cpu:0,cpu:1`), as bench/scale_serve.sh runs them on 1 and 2 GPUs."""

import json

import pytest
from click.testing import CliRunner

from bench.cli import bench
from bench.open_loop import devices_that_served
from tests.bench.conftest import make_bundle
from tests.serve.conftest import Server


def test_devices_that_served_read_from_metrics_text():
    text = '\n'.join(['# TYPE sida_images_total counter',
                      'sida_images_total{backend="torch",device="cuda:1",model="m"} 16.0',
                      'sida_images_total{backend="torch",device="cuda:0",model="m"} 8.0',
                      'sida_images_total{backend="torch",device="cuda:2",model="m"} 0.0',
                      'sida_images_total{backend="torch",device="cuda:3",model="other"} 4.0'])
    assert devices_that_served(text, 'm') == ['cuda:0', 'cuda:1']


def http_run(url, out, name, *args):
    result = CliRunner().invoke(bench, ['http', '--url', url, '--duration', '1.5', '--n', '2', '--warmup-requests', '2',
                                        '--no-plot', '--out', str(out), '--name', name, '--label', 'one-process', *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (path,) = out.glob(f'*/*-{name}.json')
    return path


def test_one_and_two_device_servers_compared(tmp_path):
    bundle = make_bundle(tmp_path / 'tiny')
    files = []
    for devices in ('cpu:0', 'cpu:0,cpu:1'):
        s = Server('--bundle', bundle, '--backend', 'torch', '--max-batch', '4', '--devices', devices, tmp_path=tmp_path)
        try:
            gpus = devices.count(',') + 1
            closed = http_run(s.url, tmp_path / 'res', f'closed-g{gpus}', '--concurrency', '1,6')
            assert json.loads(closed.read_text())['settings']['server_devices'] == devices.split(',')
            saturation = max(r['images_per_s'] for r in json.loads(closed.read_text())['results'])
            files += [closed, http_run(s.url, tmp_path / 'res', f'open-g{gpus}', '--rate', f'{0.8 * saturation / 2:.2f}')]
        finally:
            s.stop()
    result = CliRunner().invoke(bench, ['serve-scaling', *map(str, files), '--out', str(tmp_path / 'summary')],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / 'summary').glob('*/*-serve-scaling.json')
    assert path.with_suffix('.png').is_file()
    one, two = json.loads(path.read_text())['results']
    assert (one['gpus'], two['gpus']) == (1, 2) and one['layout'] == two['layout'] == 'one-process'
    assert one['speedup'] == 1 and two['speedup'] == pytest.approx(two['images_per_s'] / one['images_per_s'])
    assert two['target_speedup'] == 1.8 and two['speedup_met'] == (two['speedup'] >= 1.8)
    for row in (one, two):
        assert len(row['files']) == 2 and row['load_fraction'] == pytest.approx(0.8, abs=0.01)
        assert row['load_p99_ms'] > 0 and row['saturation_concurrency'] in (1, 6)
    assert two['load_p99_vs_one_gpu'] == pytest.approx(two['load_p99_ms'] / one['load_p99_ms'])


def test_files_that_are_not_http_results_are_one_line(tmp_path):
    bad = tmp_path / 'x.json'
    bad.write_text(json.dumps({'settings': {}, 'results': [{'kind': 'generate'}]}))
    result = CliRunner().invoke(bench, ['serve-scaling', str(bad), '--out', str(tmp_path)])
    assert result.exit_code == 1 and 'not a `sida bench http` result' in result.output
