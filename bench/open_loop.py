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
import itertools
import math
import random
import re
import time

from bench.loadtest import answered_summary, client_errors, client_session, count_answer, new_tally, post_generate
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


def process_schedules(rate, duration, seed, processes=1, max_requests=None):
    """Each client process's send times: independent Poisson streams at rate/processes (process i seeded
    seed * processes + i), together a Poisson stream at `rate`, cut after the `max_requests`-th arrival of them all;
    and the window they cover (`duration`, or that last arrival's time when cut)."""
    schedules = [poisson_schedule(rate / processes, duration, seed * processes + i, max_requests) for i in range(processes)]
    arrivals = sorted(t for schedule in schedules for t in schedule)
    if max_requests is None or len(arrivals) < max_requests:
        return schedules, duration
    last = arrivals[max_requests - 1]
    return [[t for t in schedule if t <= last] for schedule in schedules], last


IMAGES = re.compile(r'^sida_images_total\{([^}]*)\}\s+(\S+)')


def devices_that_served(metrics_text, model):
    """The devices (the `device` label of sida_images_total) that generated images of `model`, sorted."""
    served = set()
    for line in metrics_text.splitlines():
        match = IMAGES.match(line)
        if match and float(match[2]) > 0:
            labels = dict(LABEL.findall(match[1]))
            if labels.get('model') == model and 'device' in labels:
                served.add(labels['device'])
    return sorted(served)


def scrape_devices(url, model, headers, timeout):
    """devices_that_served from the server's /metrics (all workers' added up); [] if it has none."""
    import httpx
    r = httpx.get(f'{url}/metrics', headers=headers, timeout=timeout)
    return devices_that_served(r.text, model) if r.status_code == 200 else []


def scrape_batch_sizes(url, model, headers, timeout):
    """`model`'s sida_batch_size histogram from the server's /metrics, or None if it has none."""
    import httpx
    r = httpx.get(f'{url}/metrics', headers=headers, timeout=timeout)
    return batch_size_histogram(r.text, model) if r.status_code == 200 else None


async def rate_step(url, schedule, template, timeout, first_seed, seed_step, headers, ready=None):
    """Send a request at each time of `schedule` (seconds from the start) and wait for every answer; returns the tally
    with the send lags, 429 times, send times and `finished`, all from the start. Seeds and `ready` as in closed_loop."""
    tally, seeds, errors = new_tally(), itertools.count(first_seed, seed_step), client_errors()
    tally.update(lags=[], rejected=[], sent_at=[])

    async def send(due):
        now = time.perf_counter()
        tally['sent_at'].append(now - start)
        tally['lags'].append(now - due)
        try:
            r = await post_generate(session, {**template, 'seed': next(seeds)})
        except errors as e:
            tally['codes'][type(e).__name__] += 1
            return
        answered = time.perf_counter()
        count_answer(tally, r, answered - due)          # latency from the scheduled send
        if r.status_code == 429:                        # the server's refusal time: from sending, not from the schedule
            tally['rejected'].append(answered - now)

    async with client_session(url, timeout, headers) as session:     # open loop: no client-side cap on connections
        if ready:
            ready()
        tasks = []
        start = time.perf_counter()
        for offset in schedule:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            tasks.append(asyncio.create_task(send(start + offset)))
        await asyncio.gather(*tasks)
        tally['finished'] = time.perf_counter() - start
    return tally


def rate_row(info, rate, seed, n, window, tally, before, after, processes=1):
    """One rate's row from its (merged) tally, the window its schedule covered, and the /metrics scrapes around it."""
    sent, sent_at = sum(tally['codes'].values()), tally['sent_at']
    row = {'kind': 'http-open-loop', 'backend': info.get('backend'), 'model': info['id'], 'offered_rps': rate, 'n': n,
           'arrival_seed': seed, 'client_processes': processes, 'send_window_s': window, 'scheduled_rps': sent / window,
           'sent_rps': sent / max(window, max(sent_at, default=0.0))}
    row.update(answered_summary(tally, n, max(window, tally['finished'])))
    if tally['lags']:
        row['send_lag_p99_ms'] = percentiles(tally['lags'])['p99_ms']
    if tally['rejected']:
        row['time_to_429_p99_ms'] = percentiles(tally['rejected'])['p99_ms']
    if before is not None and after is not None:
        row.update(batch_size_delta(before, after))
    return row
