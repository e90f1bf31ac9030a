"""Bounded loopback load on a real server (count and time limited), and recovery after a backend failure."""

import json
import threading
import time

import httpx
import numpy as np

from tests.serve.conftest import in_process


def rss_mb(pid):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def test_bounded_load_has_no_unintended_errors(server, tmp_path):
    """16 clients for 5 s (at most 2,000 requests), loopback only; latency and throughput go to a JSON file."""
    clients, duration, cap = 16, 5.0, 2000
    latencies, codes, lock = [], [], threading.Lock()
    before = rss_mb(server.process.pid)
    stop_at = time.monotonic() + duration

    def worker(i):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            k = 0
            while time.monotonic() < stop_at:
                with lock:
                    if len(codes) >= cap:
                        return
                t = time.perf_counter()
                r = client.post('/v1/generate', json={'seed': i * 100_000 + k, 'n': 1})
                with lock:
                    latencies.append(time.perf_counter() - t)
                    codes.append(r.status_code)
                k += 1
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 60)
    elapsed = time.monotonic() - started
    growth = rss_mb(server.process.pid) - before
    ok = [lat for lat, c in zip(latencies, codes) if c == 200]
    report = {'clients': clients, 'seconds': round(elapsed, 2), 'requests': len(codes), 'ok': len(ok),
              'status_counts': {str(c): codes.count(c) for c in set(codes)}, 'images_per_s': len(ok) / elapsed,
              'p50_ms': 1000 * float(np.percentile(ok, 50)), 'p99_ms': 1000 * float(np.percentile(ok, 99)),
              'rss_growth_mb': round(growth, 1), 'backend': 'torch (CPU)', 'model': 'demo-untrained-ddpmpp 32x32'}
    (tmp_path / 'load.json').write_text(json.dumps(report, indent=2))
    assert set(codes) <= {200, 429}, report
    assert len(ok) > 50, report
    assert growth < 300, report          # no leak worth the name across a few thousand images


def test_backend_failure_gives_503_and_readiness_recovers(class_bundle_dir, triton):
    """Stop the Triton server under a running API: 503 + not ready; start it again: served and ready."""
    with in_process(class_bundle_dir, backend='triton', triton_url=triton.url) as api:
        assert api.post('/v1/generate', json={'seed': 1}).status_code == 200
        triton.stop()
        r = api.post('/v1/generate', json={'seed': 1})
        assert r.status_code == 503 and r.json()['error']['code'] == 'backend_failed' and 'Retry-After' in r.headers
        assert api.get('/readyz').status_code == 503
        triton.start()
        assert api.get('/readyz').status_code == 200       # recovers by probing, before any traffic returns
        assert api.post('/v1/generate', json={'seed': 1}).status_code == 200
