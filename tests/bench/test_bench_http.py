"""`sida bench http` against a real `sida serve` (uvicorn subprocess on a free loopback port)."""

import pytest
from click.testing import CliRunner

from bench.cli import bench
from bench.loadtest import RemoteRefused, check_loopback, server_timing
from tests.bench.conftest import make_bundle, only_json
from tests.serve.conftest import Server


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp('http')
    s = Server('--bundle', make_bundle(root / 'tiny'), '--backend', 'torch', '--max-delay-ms', '2', tmp_path=root)
    yield s
    s.stop()


def test_load_levels_report_throughput_latency_and_no_errors(server, tmp_path):
    result = CliRunner().invoke(bench, ['http', '--url', server.url, '--concurrency', '1,4', '--duration', '1', '--max-requests', '500',
                                        '--warmup-requests', '2', '--out', str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    path, run = only_json(tmp_path)
    assert path.with_suffix('.png').is_file()
    assert run['settings']['server_backend'] == 'torch' and run['settings']['model'] == 'tiny-0'
    assert [r['concurrency'] for r in run['results']] == [1, 4]
    for row in run['results']:
        assert row['kind'] == 'http' and row['backend'] == 'torch'
        assert row['ok'] == row['requests'] > 0 and row['error_count'] == 0 and row['errors'] == {}
        assert row['requests'] <= 500 and row['duration_s'] < 10
        assert 0 < row['p50_ms'] <= row['p90_ms'] <= row['p99_ms']
        assert row['images_per_s'] == pytest.approx(row['ok'] / row['duration_s'])
        assert row['server_generate_p50_ms'] > 0


def test_request_cap_bounds_a_level(server, tmp_path):
    result = CliRunner().invoke(bench, ['http', '--url', server.url, '--concurrency', '2', '--duration', '30', '--max-requests', '6',
                                        '--warmup-requests', '0', '--no-plot', '--out', str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    _, run = only_json(tmp_path)
    assert run['results'][0]['requests'] == 6 and run['results'][0]['duration_s'] < 30


def test_only_loopback_urls_unless_allowed(tmp_path):
    for url in ('http://127.0.0.1:8000', 'http://127.9.9.9:1', 'http://[::1]:8000', 'http://localhost:8000'):
        check_loopback(url)
    for url in ('http://10.0.0.1:8000', 'http://example.com', 'http://0.0.0.0:8000'):
        with pytest.raises(RemoteRefused):
            check_loopback(url)
    check_loopback('http://10.0.0.1:8000', allow_remote=True)
    result = CliRunner().invoke(bench, ['http', '--url', 'http://192.0.2.1:8000', '--out', str(tmp_path)])
    assert result.exit_code == 2 and 'not a loopback address' in result.output
    assert not list(tmp_path.iterdir())


def test_server_timing_header_is_read_without_the_body():
    assert server_timing('queue;dur=1.5, generate;dur=3.25') == {'queue': 1.5, 'generate': 3.25}
    assert server_timing('') == {} and server_timing('cache;desc=hit, x;dur=oops') == {}
