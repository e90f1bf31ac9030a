"""`sida bench http --rate`: open-loop load on a running `sida serve`, Poisson arrivals at one offered rate at a time.

Each rate's send times are drawn up front from a seeded RNG (exponential gaps, mean 1/rate) over `duration`
seconds, and every request goes out at its time whether or not earlier ones were answered: a server that cannot
keep up shows it as latency and errors, not as a lower offered rate (as in a closed loop). Latency runs from the
scheduled send time, so a client that falls behind its schedule counts too; how far behind it fell is reported
(`sent_rps`, `send_lag_p99_ms`). The batches the server formed are the step's change in its `sida_batch_size`
histogram on /metrics, scraped before and after.
"""

import asyncio
import collections
import math
import random
import re
import time

from bench.loadtest import CLIENTS_PER_POOL, latency_summary, server_split
from bench.record import percentiles

METRIC = re.compile(r'^sida_batch_size_(bucket|sum|count)\{([^}]*)\}\s+(\S+)')
LABEL = re.compile(r'(\w+)="([^"]*)"')


def poisson_schedule(rate, duration, seed, max_requests=None):
    """Send times, seconds from the step's start, of a Poisson process at `rate` per second within [0, duration)."""
    rng, times = random.Random(seed), []
    t = rng.expovariate(rate)
    while t < duration and (max_requests is None or len(times) < max_requests):
        times.append(t)
        t += rng.expovariate(rate)
    return times


def batch_size_histogram(metrics_text, model):
    """`model`'s cumulative sida_batch_size histogram in Prometheus text: ({le: batches}, images, batches), over backends."""
    buckets, totals = collections.Counter(), collections.Counter()
    for line in metrics_text.splitlines():
        match = METRIC.match(line)
        if not match:
            continue
        labels = dict(LABEL.findall(match[2]))
        if labels.get('model') != model:
            continue
        if match[1] == 'bucket':
            buckets[labels['le']] += float(match[3])
        else:
            totals[match[1]] += float(match[3])
    return buckets, totals['sum'], totals['count']


def batch_size_delta(before, after):
    """The batches formed between two scrapes: batches per bucket (keyed by its upper bound, "4" holding sizes 3 and 4),
    their count, their images and the mean batch size."""
    (cum_before, images_before, batches_before), (cum_after, images_after, batches_after) = before, after
    histogram, below = {}, 0
    for le in sorted(cum_after, key=float):
        cumulative = cum_after[le] - cum_before.get(le, 0)
        if cumulative > below:
            histogram['+Inf' if math.isinf(float(le)) else f'{float(le):g}'] = round(cumulative - below)
        below = cumulative
    batches, images = round(batches_after - batches_before), round(images_after - images_before)
    return {'batch_size_histogram': histogram, 'batches': batches, 'batched_images': images,
            'mean_batch_size': images / batches if batches else None}


async def _scrape(client, model):
    r = await client.get('/metrics')
    return batch_size_histogram(r.text, model) if r.status_code == 200 else None


async def rate_step(url, info, rate, duration, max_requests, template, timeout, seed, seed_base, headers):
    """Offer `rate` requests/s for `duration` seconds (at most `max_requests`), wait for every answer; returns the row."""
    import httpx
    schedule = poisson_schedule(rate, duration, seed, max_requests)
    window = duration if len(schedule) < max_requests else schedule[-1]       # the span the schedule covers
    latencies, lags, rejected, sent_at, codes, server_ms = [], [], [], [], collections.Counter(), {}

    async def send(client, i, due):
        now = time.perf_counter()
        sent_at.append(now)
        lags.append(now - due)
        try:
            r = await client.post('/v1/generate', json={**template, 'seed': seed_base + i})
        except httpx.HTTPError as e:
            codes[type(e).__name__] += 1
            return
        answered = time.perf_counter()
        codes[str(r.status_code)] += 1
        if r.status_code == 200:
            latencies.append(answered - due)
            for key, ms in server_split(r).items():
                server_ms.setdefault(key, []).append(ms / 1000)
        elif r.status_code == 429:              # the server's refusal time: from sending, not from the schedule
            rejected.append(answered - now)

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)    # open loop: no client-side cap
    clients = [httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers, limits=limits) for _ in range(CLIENTS_PER_POOL)]
    try:
        before = await _scrape(clients[0], info['id'])
        tasks = []
        start = time.perf_counter()
        for i, offset in enumerate(schedule):
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            tasks.append(asyncio.create_task(send(clients[i % len(clients)], i, start + offset)))
        await asyncio.gather(*tasks)
        finished = time.perf_counter()
        after = await _scrape(clients[0], info['id'])
    finally:
        for client in clients:
            await client.aclose()
    sent, n = len(schedule), template['n']
    duration_s = max(window, finished - start)
    ok = codes.get('200', 0)
    errors = {k: v for k, v in sorted(codes.items()) if k != '200'}
    row = {'kind': 'http-open-loop', 'backend': info.get('backend'), 'model': info['id'], 'offered_rps': rate, 'n': n,
           'arrival_seed': seed, 'requests': sent, 'ok': ok, 'errors': errors, 'error_count': sum(errors.values()),
           'send_window_s': window, 'duration_s': duration_s, 'scheduled_rps': sent / window,
           'sent_rps': sent / max(window, (max(sent_at) - start) if sent_at else 0.0),
           'requests_per_s': ok / duration_s, 'images_per_s': ok * n / duration_s}
    if lags:
        row['send_lag_p99_ms'] = percentiles(lags)['p99_ms']
    row.update(latency_summary(latencies, server_ms))
    if rejected:
        row['time_to_429_p99_ms'] = percentiles(rejected)['p99_ms']
    if before is not None and after is not None:
        row.update(batch_size_delta(before, after))
    return row
