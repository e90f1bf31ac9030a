"""Load shedding on the real app: while its event loop runs late, generation requests get 429 before their body is
read, health checks still answer, and once the loop is on time again requests are served. The loop is made late the
way an overload makes it late: something holds it (here a coroutine that blocks it for a known time)."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from serve.load_shedding import BUSY, LoopLag
from tests.serve.conftest import in_process


@contextmanager
def loop_kept_late(client, block_s=0.08):
    """The app's event loop blocked for block_s at every turn of a coroutine, as a saturated loop is late: whatever
    else it runs waits each time (here the lag probe and the requests)."""
    lag, running, begun = client.app.state.sida.lag, threading.Event(), threading.Event()
    running.set()

    async def hog():
        while running.is_set():
            time.sleep(block_s)                  # blocking on purpose
            if lag.earlier > 0.8 * block_s:      # late twice running: what an overload looks like
                begun.set()
            await asyncio.sleep(0)
    client.portal.start_task_soon(hog)
    try:
        assert begun.wait(10)
        yield
    finally:
        running.clear()


def wait_on_time(lag, limit_ms, timeout=5.0):
    end = time.monotonic() + timeout
    while lag.ms() > limit_ms:
        assert time.monotonic() < end, f'the loop stayed {lag.ms():.0f} ms late'
        time.sleep(0.01)


def burst(api, count):
    """count generation requests at once; their responses."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: api.post('/v1/generate', json={'seed': i}), range(count)))


def test_a_late_loop_with_requests_in_hand_sheds_the_rest_and_still_answers_health(class_bundle_dir):
    with in_process(class_bundle_dir, max_loop_lag_ms=40) as api:
        state = api.app.state.sida
        assert api.post('/v1/generate', json={'seed': 0}).status_code == 200
        with loop_kept_late(api), ThreadPoolExecutor(1) as side:
            assert api.post('/v1/generate', json={'seed': 1}).status_code == 200     # late, nothing in hand: served
            shedding = side.submit(burst, api, BUSY + 8)
            while not shedding.done() and not state.metrics.registry.get_sample_value('sida_errors_total',
                                                                                    {'code': 'loop_overloaded'}):
                time.sleep(0.01)
            during = [api.get('/healthz').status_code, api.post('/healthz').status_code]   # while shedding: not shed
            codes = sorted(r.status_code for r in shedding.result())
        assert during == [200, 405]
        assert codes.count(200) >= BUSY and 429 in codes and set(codes) <= {200, 429}
        metrics = api.get('/metrics').text
        assert f'sida_errors_total{{code="loop_overloaded"}} {codes.count(429):.1f}' in metrics
        assert f'sida_requests_total{{route="(shed)",status="429"}} {codes.count(429):.1f}' in metrics
        wait_on_time(state.lag, 40)
        assert {r.status_code for r in burst(api, BUSY + 8)} == {200}           # on time again, requests in hand


def test_a_refusal_says_why_and_when_to_retry(class_bundle_dir):
    with in_process(class_bundle_dir, max_loop_lag_ms=40) as api, loop_kept_late(api):
        refused = [r for r in burst(api, BUSY + 8) if r.status_code == 429]
    assert refused and refused[0].headers['Retry-After'] == '1'
    error = refused[0].json()['error']
    assert error['code'] == 'loop_overloaded' and 'event loop' in error['message'] and 'limit of 40 ms' in error['message']


def test_a_limit_of_zero_never_sheds(class_bundle_dir):
    with in_process(class_bundle_dir, max_loop_lag_ms=0) as api, loop_kept_late(api):
        assert {r.status_code for r in burst(api, BUSY + 8)} == {200}


def test_loop_lag_counts_a_probe_that_could_not_run():
    """ms() counts the wake-up that is overdue now: a loop held twice running, the probe waking late in between, is
    late the moment it is free, before the probe has run again; held once, it is not."""
    async def held(times):
        lag = LoopLag(interval=0.005)
        lag.start()
        try:
            await asyncio.sleep(0.02)
            for i in range(times):
                if i:
                    while lag.late < 0.08:          # the probe woke after the first hold
                        await asyncio.sleep(0)
                time.sleep(0.1)
            return lag.ms()
        finally:
            await lag.stop()
    assert asyncio.run(held(2)) >= 80
    assert asyncio.run(held(1)) < 80
