"""`sida bench http` against a real `sida serve` (uvicorn subprocess on a free loopback port)."""

import pytest
from click.testing import CliRunner

from bench.cli import bench
from bench.loadtest import RemoteRefused, check_loopback, even_split, server_timing
from bench.open_loop import batch_size_delta, batch_size_histogram, poisson_schedule, process_schedules
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


def test_request_cap_bounds_a_level_and_binary_npy_responses_are_measured(server, tmp_path):
    result = CliRunner().invoke(bench, ['http', '--url', server.url, '--concurrency', '2', '--duration', '30', '--max-requests', '6',
                                        '--n', '2', '--format', 'npy', '--response', 'binary', '--warmup-requests', '1', '--no-plot',
                                        '--out', str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    _, run = only_json(tmp_path)
    assert run['results'][0]['requests'] == run['results'][0]['ok'] == 6 and run['results'][0]['duration_s'] < 30
    assert (run['settings']['format'], run['settings']['response']) == ('npy', 'binary')


def test_open_loop_rates_report_what_was_sent_answered_and_batched(server, tmp_path):
    """--rate beside --concurrency: both run; every request scheduled is sent and counted once, and the server's batch
    histogram accounts for every image it answered."""
    n, duration = 2, 2.0
    args = ['--concurrency', '1', '--rate', '5,20', '--n', n, '--duration', duration, '--arrival-seed', 7, '--warmup-requests', 1]
    result = CliRunner().invoke(bench, ['http', '--url', server.url, *map(str, args), '--out', str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    path, run = only_json(tmp_path)
    assert path.with_name(f'{path.stem}-http.png').is_file() and path.with_name(f'{path.stem}-http-open-loop.png').is_file()
    assert run['settings']['rates_rps'] == [5, 20] and run['settings']['concurrency'] == [1]
    assert [r['kind'] for r in run['results']] == ['http', 'http-open-loop', 'http-open-loop']
    for step, row in enumerate(run['results'][1:]):
        assert row['offered_rps'] == [5, 20][step] and row['arrival_seed'] == 7 + step
        assert row['requests'] == len(poisson_schedule(row['offered_rps'], duration, 7 + step)) > 0
        assert row['ok'] + row['error_count'] == row['requests'] and row['ok'] > 0
        assert row['scheduled_rps'] == pytest.approx(row['requests'] / duration)
        assert 0.5 * row['scheduled_rps'] <= row['sent_rps'] <= row['scheduled_rps']      # sent on time, or late: never early
        assert row['requests_per_s'] <= row['sent_rps'] and row['images_per_s'] == pytest.approx(n * row['requests_per_s'])
        assert row['send_lag_p99_ms'] >= 0
        assert 0 < row['p50_ms'] <= row['p90_ms'] <= row['p99_ms']
        assert sum(row['batch_size_histogram'].values()) == row['batches'] > 0
        assert row['batched_images'] == n * row['ok']           # nothing else loads the server during a step
        assert n <= row['mean_batch_size'] == pytest.approx(row['batched_images'] / row['batches'])
        assert ('time_to_429_p99_ms' in row) == ('429' in row['errors'])


def generate_requests_served(server):
    """The server's count of answered POST /v1/generate requests, by status, from its /metrics."""
    counts = {}
    for line in server.client.get('/metrics').text.splitlines():
        if line.startswith('sida_requests_total{') and 'route="/v1/generate"' in line:
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0) + round(float(line.split()[-1]))
    return counts


def test_client_processes_split_a_level_and_a_rate_and_merge_into_the_same_rows(server, tmp_path):
    """--client-processes 2: a level's clients and a rate's Poisson arrivals are split across two spawned processes;
    the merged rows count every request once (as the server counted them), and the batches account for every image."""
    n, duration, rate, seed = 2, 1.0, 15.0, 3
    args = ['--concurrency', 3, '--rate', rate, '--client-processes', 2, '--n', n, '--duration', duration, '--arrival-seed', seed,
            '--warmup-requests', 1, '--no-plot']
    served_before = generate_requests_served(server)
    result = CliRunner().invoke(bench, ['http', '--url', server.url, *map(str, args), '--out', str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    served = {k: v - served_before.get(k, 0) for k, v in generate_requests_served(server).items()}
    _, run = only_json(tmp_path)
    assert run['settings']['client_processes'] == 2 and 'processes' in run['settings']['client']
    level, step = run['results']
    arrivals = len(poisson_schedule(rate / 2, duration, 2 * seed)) + len(poisson_schedule(rate / 2, duration, 2 * seed + 1))
    assert step['requests'] == arrivals > 0                       # the two seeded streams, every arrival sent once
    assert sum(served.values()) == 1 + level['requests'] + step['requests']     # warm-up, then what both processes sent
    for row in (level, step):
        assert row['client_processes'] == 2 and row['n'] == n
        assert row['ok'] + row['error_count'] == row['requests'] > 0 and row['ok'] > 0
        assert row['error_count'] == sum(row['errors'].values())
        assert 0 < row['p50_ms'] <= row['p90_ms'] <= row['p99_ms']
        assert row['images_per_s'] == pytest.approx(n * row['ok'] / row['duration_s'])
    assert served.get('200', 0) == 1 + level['ok'] + step['ok']
    assert step['scheduled_rps'] == pytest.approx(step['requests'] / duration) and step['sent_rps'] <= step['scheduled_rps']
    assert step['send_lag_p99_ms'] >= 0
    assert sum(step['batch_size_histogram'].values()) == step['batches'] > 0
    assert step['batched_images'] == n * step['ok']


def test_a_rate_split_across_processes_is_cut_at_the_request_cap_of_them_all():
    assert process_schedules(40.0, 5.0, 9) == ([poisson_schedule(40.0, 5.0, 9)], 5.0)         # one process: today's schedule
    full, window = process_schedules(40.0, 5.0, 9, processes=3)
    assert window == 5.0 and full == [poisson_schedule(40.0 / 3, 5.0, 27 + i) for i in range(3)]
    cut, window = process_schedules(40.0, 5.0, 9, processes=3, max_requests=50)
    merged = sorted(t for schedule in full for t in schedule)
    assert sum(map(len, cut)) == 50 and window == merged[49]
    assert all(c == s[:len(c)] for c, s in zip(cut, full))
    assert even_split(10, 4) == [3, 3, 2, 2] and even_split(2, 3) == [1, 1, 0] and sum(even_split(20000, 7)) == 20000


def test_poisson_schedule_is_seeded_with_mean_gap_one_over_rate():
    times = poisson_schedule(50.0, 200.0, seed=3)
    assert times == poisson_schedule(50.0, 200.0, seed=3) != poisson_schedule(50.0, 200.0, seed=4)
    assert times == sorted(times) and 0 < times[0] and times[-1] < 200
    assert len(times) / 200 == pytest.approx(50, rel=0.05)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50, rel=0.05)
    assert len(poisson_schedule(50.0, 200.0, seed=3, max_requests=10)) == 10


def test_batch_size_delta_from_two_scrapes_of_metrics():
    def scrape(ones, fours, other_model=0):
        return batch_size_histogram(f"""# TYPE sida_batch_size histogram
sida_batch_size_bucket{{backend="torch",le="1.0",model="m"}} {ones}.0
sida_batch_size_bucket{{backend="torch",le="2.0",model="m"}} {ones}.0
sida_batch_size_bucket{{backend="torch",le="4.0",model="m"}} {ones + fours}.0
sida_batch_size_bucket{{backend="torch",le="+Inf",model="m"}} {ones + fours}.0
sida_batch_size_count{{backend="torch",model="m"}} {ones + fours}.0
sida_batch_size_sum{{backend="torch",model="m"}} {ones + 3 * fours}.0
sida_batch_size_count{{backend="torch",model="other"}} {other_model}.0
sida_batch_size_sum{{backend="torch",model="other"}} {other_model}.0
""", 'm')
    delta = batch_size_delta(scrape(2, 1), scrape(5, 3, other_model=9))
    assert delta == {'batch_size_histogram': {'1': 3, '4': 2}, 'batches': 5, 'batched_images': 9, 'mean_batch_size': 1.8}
    assert batch_size_delta(scrape(2, 1), scrape(2, 1))['mean_batch_size'] is None


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
