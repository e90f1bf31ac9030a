"""Deadline admission and batch fault isolation, on the real app with the real torch backend made slow (or, for one
batch, failing) by a wrapper: the slow part is a sleep so that the drain rate is known, the images are real."""

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.bench.conftest import make_bundle
from tests.serve.conftest import in_process


class Slowed:
    """A real backend behind a known per-image delay; counts its calls; can fail the next call like a CUDA OOM."""

    pipelined = False          # every batch through generate() here, also where the real backend would queue on a GPU

    def __init__(self, backend, seconds_per_image):
        self.backend, self.seconds_per_image = backend, seconds_per_image
        self.calls, self.fail_next, self.lock = 0, False, threading.Lock()

    def __getattr__(self, name):          # name, warm, describe(), ...: the real backend's
        return getattr(self.backend, name)

    def generate(self, inputs):
        with self.lock:
            self.calls += 1
            fail, self.fail_next = self.fail_next, False
        time.sleep(self.seconds_per_image * len(inputs['noise']))
        if fail:
            raise RuntimeError('CUDA out of memory (injected)')
        return self.backend.generate(inputs)


@pytest.fixture(scope='module')
def tiny_bundle_dir(tmp_path_factory):
    """A 16x16 model whose own time is small beside the injected sleep, so the drain rate is steady on a busy CPU."""
    return make_bundle(tmp_path_factory.mktemp('deadlines') / 'tiny')


@pytest.fixture
def slow_api(tiny_bundle_dir):
    """The app with one image per batch and no batching window: under 10 images/s (the sleep plus the model's time)."""
    with in_process(tiny_bundle_dir, max_batch=1, max_delay_ms=0) as api:
        model = next(iter(api.app.state.sida.models.values()))
        model.replicas[0].batcher.backend = slow = Slowed(model.replicas[0].batcher.backend, 0.1)
        for seed in range(3):                                                      # measures the drain rate
            assert api.post('/v1/generate', json={'seed': seed}).status_code == 200
        yield api, model.replicas[0].batcher, slow


def burst(api, count, deadline_ms, n=1):
    """count requests at once; each (status, seconds, response)."""
    def one(i):
        t = time.perf_counter()
        r = api.post('/v1/generate', json={'seed': i, 'n': n}, headers={'X-Request-Deadline-Ms': str(deadline_ms)})
        return r.status_code, time.perf_counter() - t, r
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_admitted_work_meets_its_deadline_and_the_rest_is_refused_at_once(slow_api):
    api, batcher, slow = slow_api
    rate = batcher.drain.images_per_s               # the sleep plus the model's own time on this CPU
    assert rate < 10
    results = burst(api, 24, deadline_ms=2000)      # 24 images at `rate` are well over 2 s of work
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 429, 504}, codes
    done = [s for c, s, _ in results if c == 200]
    refused = [(s, r) for c, s, r in results if c == 429]
    assert 2 <= len(done) <= 2 * rate + 1 and len(refused) >= 24 - 2 * rate - 2, (codes, rate)
    assert max(done) < 2.0 + 0.3, done              # admitted: finished in time (0.3 s: HTTP and thread overhead)
    for seconds, r in refused:
        assert seconds < 0.5 and r.json()['error']['code'] == 'deadline_unmeetable'
        assert 1 <= int(r.headers['Retry-After']) <= 24 / rate      # the queue ahead is at most 24 images
    assert slow.calls == 3 + len(done)              # refused work never reached the backend
    assert batcher.stats.refused == len(refused)


def test_work_whose_deadline_passes_in_the_queue_is_dropped_not_run(slow_api):
    api, batcher, slow = slow_api
    deadline = 1.2 * 6 / batcher.drain.images_per_s      # six images fit by the measured rate: all are admitted...
    slow.seconds_per_image = deadline / 1.2
    # ...then the backend slows down: only two can start in time. The second starts at 0.83 of the deadline, the third
    # at 1.67: a request's deadline counts from its own arrival, and the burst's arrivals spread on a busy machine (at
    # deadline / 2 the third started at 1.0x and ran when it arrived late enough).
    calls = slow.calls
    results = burst(api, 6, deadline_ms=1000 * deadline)
    codes = sorted(c for c, _, _ in results)
    assert codes.count(429) == 0 and codes.count(504) >= 4, codes
    assert slow.calls - calls == codes.count(200) <= 2, (codes, slow.calls - calls)   # expired work was never run
    assert batcher.stats.expired == codes.count(504)
    for c, _, r in results:
        if c == 504:
            assert r.json()['error']['code'] == 'deadline_exceeded'


def test_deadline_header_is_checked_and_capped(slow_api):
    api, _, _ = slow_api
    for bad in ('soon', '-5', '0', 'inf', 'nan'):
        r = api.post('/v1/generate', json={'seed': 1}, headers={'X-Request-Deadline-Ms': bad})
        assert r.status_code == 400 and 'X-Request-Deadline-Ms' in r.json()['error']['message'], bad
    assert api.post('/v1/generate', json={'seed': 1}, headers={'X-Request-Deadline-Ms': '1e12'}).status_code == 200


def test_a_tight_default_deadline_refuses_what_it_cannot_do(tiny_bundle_dir):
    with in_process(tiny_bundle_dir, max_batch=1, max_delay_ms=0, deadline_ms=250) as api:
        model = next(iter(api.app.state.sida.models.values()))
        model.replicas[0].batcher.backend = Slowed(model.replicas[0].batcher.backend, 0.1)
        assert api.post('/v1/generate', json={'seed': 0}).status_code == 200
        estimate = 8 / model.replicas[0].batcher.drain.images_per_s                   # over 0.8 s of work, 0.25 s allowed
        r = api.post('/v1/generate', json={'seed': 0, 'n': 8})
        assert r.status_code == 429 and r.headers['Retry-After'] == str(max(1, math.ceil(estimate - 0.25)))


def test_a_bad_request_gets_its_own_error_even_when_the_server_would_refuse_the_work(slow_api):
    """Admission comes after the checks that make a request bad whatever the load: a 1 ms deadline is refused (429)
    for a good request and the bad ones still get their 4xx, not a 429 to retry forever."""
    api, _, _ = slow_api
    tight = {'X-Request-Deadline-Ms': '1'}
    assert api.post('/v1/generate', json={'seed': 1}, headers=tight).status_code == 429
    for bad in ({'seed': 2 ** 63 - 1, 'n': 2}, {'seed': 1, 'seed_b': 2 ** 63 - 1, 'n': 2, 'mix': 0.5}):
        r = api.post('/v1/generate', json=bad, headers=tight)
        assert 400 <= r.status_code < 500 and r.status_code != 429 and 'largest seed' in r.json()['error']['message'], bad


def test_a_failing_batch_fails_only_its_requests_and_readiness_returns(class_bundle_dir):
    with in_process(class_bundle_dir, max_batch=2, max_delay_ms=200) as api:
        model = next(iter(api.app.state.sida.models.values()))
        model.replicas[0].batcher.backend = slow = Slowed(model.replicas[0].batcher.backend, 0.0)
        slow.fail_next = True                # the first batch of the burst hits an (injected) out-of-memory error
        results = burst(api, 6, deadline_ms=30_000)
        codes = sorted(c for c, _, _ in results)
        assert codes == [200, 200, 200, 200, 503, 503], codes     # that batch's two requests, not its neighbours
        for c, _, r in results:
            if c == 503:
                assert r.json()['error']['code'] == 'backend_failed' and 'out of memory' in r.json()['error']['message']
        assert api.get('/readyz').status_code == 200                # later batches succeeded: healthy again
        slow.fail_next = True                                       # a failure with nothing after it
        assert api.post('/v1/generate', json={'seed': 1}).status_code == 503
        assert not model.replicas[0].batcher.healthy
        assert api.get('/readyz').status_code == 200                # readiness probes and recovers, no restart
        assert api.post('/v1/generate', json={'seed': 1}).status_code == 200
