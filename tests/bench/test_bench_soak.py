"""`sida bench soak`: a real `sida serve` started by the command, loaded, its memory sampled; and the verdict's rule."""

import pytest
from click.testing import CliRunner

from bench.cli import bench
from bench.soak import verdict
from tests.bench.conftest import make_bundle, only_json


def test_a_short_soak_samples_the_server_and_gives_a_verdict(tmp_path):
    bundle = make_bundle(tmp_path / 'tiny')
    out = tmp_path / 'results'
    result = CliRunner().invoke(bench, ['soak', '--bundle', str(bundle), '--minutes', '0.15', '--sample-every', '1',
                                        '--warmup-seconds', '3', '--concurrency', '2', '--max-growth', '10', '--out', str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    path, run = only_json(out)
    assert path.with_suffix('.png').is_file()
    rows = run['results']
    assert len(rows) >= 6 and all(r['kind'] == 'soak' for r in rows)
    assert [r['t_s'] for r in rows] == sorted(r['t_s'] for r in rows) and rows[-1]['t_s'] <= 0.15 * 60 + 2
    assert all(100 < r['rss_mib'] < 8000 and r['gpu_mib'] is None for r in rows)      # a real process's memory, no GPU here
    assert sum(r['ok'] for r in rows) > 0 and all(r['errors'] == {} for r in rows)
    v = run['settings']['verdict']
    assert v['passed'] and v['rss_mib_growth'] == pytest.approx((v['rss_mib_max'] - v['rss_mib_after_warmup']) / v['rss_mib_after_warmup'])
    assert 'passed: memory after warm-up' in result.output


def test_growth_after_warmup_over_the_allowance_fails():
    rows = [{'t_s': t, 'rss_mib': rss, 'gpu_mib': None} for t, rss in ((30, 500), (60, 1000), (90, 1020), (120, 1049))]
    assert verdict(rows, 60, 0.05)['passed'] and verdict(rows, 60, 0.05)['rss_mib_growth'] == pytest.approx(0.049)
    rows.append({'t_s': 150, 'rss_mib': 1060, 'gpu_mib': None})      # the warm-up's jump is allowed, a later slope is not
    assert not verdict(rows, 60, 0.05)['passed']
    gpu = [{'t_s': t, 'rss_mib': 1000, 'gpu_mib': g} for t, g in ((60, 2000), (90, 2200))]
    assert not verdict(gpu, 60, 0.05)['passed']
    assert not verdict(rows[:1], 60, 0.05)['passed']                 # too few samples to say
