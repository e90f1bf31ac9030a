"""`sida bench http`: load on a running `sida serve` (POST /v1/generate): closed-loop concurrency levels, then
open-loop rates (bench/open_loop.py), one at a time.

At concurrency c, c clients each send a request, wait for the answer, and send the next, for `duration`
seconds or until `max_requests` were sent, whichever comes first; throughput is the images of successful
answers over the level's wall time. Errors are counted by HTTP status (and by exception name for
connection failures), never retried. Loopback servers only, unless `allow_remote`: this is a load
generator, not something to point at other people's machines.

One Python process cannot send much more than a few hundred requests/s, so `client_processes` > 1 splits each level
and rate across that many spawned processes, each with its own event loop and clients, their clocks started together
(a barrier); each returns its raw tally (latencies, status counts, ...), merged before the row is summarised.
"""

import asyncio
import collections
import itertools
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from urllib.parse import urlparse

from bench.record import percentiles
from sida.cli_options import is_loopback


class RemoteRefused(ValueError):
    pass


def check_loopback(url, allow_remote=False):
    parsed = urlparse(url)
    if parsed.scheme not in ('http', 'https') or not parsed.hostname:
        raise ValueError(f'bad URL {url!r}: expected http://HOST:PORT')
    host = parsed.hostname
    if not is_loopback(host) and not allow_remote:
        raise RemoteRefused(f'{host} is not a loopback address: `sida bench http` loads loopback servers only '
                            '(127.0.0.0/8, ::1, localhost); pass --allow-remote for a server you own')


def server_timing(header):
    """'queue;dur=1.2, generate;dur=3.4' -> {'queue': 1.2, 'generate': 3.4} (ms)."""
    out = {}
    for part in header.split(','):
        name, _, rest = part.strip().partition(';')
        if rest.startswith('dur='):
            try:
                out[name] = float(rest[4:])
            except ValueError:
                pass
    return out


def server_split(response):
    """The server's own queue/generate times (ms): from the Server-Timing header, else the JSON body's `timings`."""
    split = server_timing(response.headers.get('server-timing', ''))
    if not split and response.headers.get('content-type', '').startswith('application/json'):
        split = {k.removesuffix('_ms'): v for k, v in (response.json().get('timings') or {}).items()}
    return split


def request_template(info, n, prompt, fmt='png', response='b64'):
    """Every request's body but its seed: model, n, the prompt of text models, and the response's format."""
    body = {'model': info['id'], 'n': n, 'format': fmt, 'response': response}
    if info.get('condition', {}).get('kind') == 'text':
        body['prompt'] = prompt
    return body


def latency_summary(latencies, server_ms):
    """Percentiles of successful requests' latencies, and the server's own p50 split (server_queue_p50_ms, ...)."""
    if not latencies:
        return {}
    summary = percentiles(latencies)
    for key, values in server_ms.items():
        if values:
            summary[f'server_{key}_p50_ms'] = percentiles(values)['p50_ms']
    return summary


READY_TIMEOUT_S = 120    # how long client processes wait for each other to start (spawning imports the client afresh)


class Answer:
    """What the load loops keep of a response: status, headers and body (aiohttp's own is gone once read)."""
    __slots__ = ('status_code', 'headers', 'content')

    def __init__(self, status_code, headers, content):
        self.status_code, self.headers, self.content = status_code, headers, content

    def json(self):
        return json.loads(self.content)


def client_session(url, timeout, headers):
    """The load loops' HTTP client: aiohttp, whose per-request cost is under half of httpx's (GET /healthz on the 2-core
    box, 2026-12-06: 0.56-0.60 ms against 1.18-1.47 ms, http.client 0.49-0.54 ms), so that the client adds as little
    as it can to the latency it measures. No connection cap: closed loops hold one connection per client."""
    import aiohttp
    return aiohttp.ClientSession(base_url=url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout),
                                 connector=aiohttp.TCPConnector(limit=0))


def client_errors():
    """Transport failures the loops count by name (never retried)."""
    import aiohttp
    return aiohttp.ClientError, asyncio.TimeoutError


async def post_generate(session, body):
    async with session.post('/v1/generate', json=body) as r:
        return Answer(r.status, r.headers.copy(), await r.read())


def new_tally():
    """One client process's raw measurements of a level or rate: plain lists and counts, so they pickle and merge."""
    return {'latencies': [], 'codes': collections.Counter(), 'server_ms': {}}


def count_answer(tally, response, latency):
    tally['codes'][str(response.status_code)] += 1
    if response.status_code == 200:
        tally['latencies'].append(latency)
        for key, ms in server_split(response).items():
            tally['server_ms'].setdefault(key, []).append(ms / 1000)


def merge_tallies(tallies):
    """Several processes' tallies as one: lists concatenated (per key for dicts of lists), counters summed, and the
    largest of plain numbers (walls, finishing times: the longest process)."""
    merged = {}
    for tally in tallies:
        for key, value in tally.items():
            if isinstance(value, collections.Counter):
                merged.setdefault(key, collections.Counter()).update(value)
            elif isinstance(value, dict):
                for name, values in value.items():
                    merged.setdefault(key, {}).setdefault(name, []).extend(values)
            elif isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = max(merged.get(key, value), value)
    return merged


def answered_summary(tally, n, duration_s):
    """What both loops report of the answers: requests, errors by status, throughput over `duration_s`, latency."""
    codes = tally['codes']
    ok = codes.get('200', 0)
    errors = {k: v for k, v in sorted(codes.items()) if k != '200'}
    return {'requests': sum(codes.values()), 'ok': ok, 'errors': errors, 'error_count': sum(errors.values()),
            'duration_s': duration_s, 'requests_per_s': ok / duration_s, 'images_per_s': ok * n / duration_s,
            **latency_summary(tally['latencies'], tally['server_ms'])}


def even_split(total, parts):
    """`total` as `parts` integers as equal as possible, the larger first: even_split(10, 4) == [3, 3, 2, 2]."""
    return [total // parts + (i < total % parts) for i in range(parts)]


async def closed_loop(url, concurrency, duration, max_requests, template, timeout, first_seed, seed_step, headers, ready=None):
    """`concurrency` clients in closed loop for `duration` s or `max_requests` requests; returns the tally and `wall`.
    Seeds are first_seed, first_seed + seed_step, ...; `ready()` is called once the clients exist, before the clock starts."""
    tally, seeds, errors = new_tally(), itertools.count(first_seed, seed_step), client_errors()
    sent = 0

    async def worker():
        nonlocal sent
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            start = time.perf_counter()
            try:
                r = await post_generate(session, {**template, 'seed': next(seeds)})
            except errors as e:
                tally['codes'][type(e).__name__] += 1
                continue
            count_answer(tally, r, time.perf_counter() - start)

    async with client_session(url, timeout, headers) as session:
        if ready:
            ready()
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        tally['wall'] = time.perf_counter() - started
    return tally


def level_row(info, concurrency, n, tally, processes=1):
    row = {'kind': 'http', 'backend': info.get('backend'), 'model': info['id'], 'concurrency': concurrency, 'n': n,
           'client_processes': processes}
    row.update(answered_summary(tally, n, tally['wall']))
    return row


_ready_barrier = None


def _join_barrier(barrier):
    global _ready_barrier
    _ready_barrier = barrier


def _measure_in_process(measure, args):
    try:
        return asyncio.run(measure(*args, ready=lambda: _ready_barrier.wait(READY_TIMEOUT_S)))
    except BaseException:
        _ready_barrier.abort()          # the others stop waiting for this one
        raise


def measure_in_processes(measure, args_per_process):
    """`measure(*args)` (an async measuring function taking `ready`) in as many client processes as there are args,
    each with its own event loop, the clocks started together once all are ready; their tallies merged.
    One args: measured in this process."""
    if len(args_per_process) == 1:
        return asyncio.run(measure(*args_per_process[0]))
    processes = len(args_per_process)
    context = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_join_barrier,
                             initargs=(context.Barrier(processes),)) as pool:      # one task per process: each waits for all
        futures = [pool.submit(_measure_in_process, measure, args) for args in args_per_process]
        return merge_tallies([future.result() for future in futures])


def _outcome(row):
    latency = f'p50 {row["p50_ms"]:.1f} ms, p99 {row["p99_ms"]:.1f} ms' if 'p50_ms' in row else 'no successful request'
    return f'{row["images_per_s"]:8.1f} img/s, {latency}, {row["requests"]} requests, {row["error_count"]} errors {row["errors"] or ""}'


def run_http(url, concurrencies, duration=10.0, model=None, n=1, max_requests=20000, timeout=60.0, prompt='a photo of a cat',
             allow_remote=False, warmup_requests=4, api_key=None, log=print, rates=(), arrival_seed=0, deadline_ms=None,
             fmt='png', response='b64', client_processes=1):
    """Measure every concurrency level, then every open-loop rate, from `client_processes` OS processes (one: this
    process, as far as a level's concurrency allows); returns (server description, settings, rows)."""
    import aiohttp
    import httpx

    from bench.open_loop import process_schedules, rate_row, rate_step, scrape_batch_sizes, scrape_devices
    check_loopback(url, allow_remote)
    url = url.rstrip('/')
    headers = {'Authorization': f'Bearer {api_key}'} if api_key else {}
    if deadline_ms is not None:
        headers['X-Request-Deadline-Ms'] = f'{deadline_ms:g}'
    with httpx.Client(base_url=url, timeout=timeout, headers=headers) as client:
        r = client.get('/v1/models')
        r.raise_for_status()
        models = r.json()['data']
        if not models:
            raise RuntimeError(f'{url} serves no models')
        info = next((m for m in models if m['id'] == model), None) if model else models[0]
        if info is None:
            raise ValueError(f'{url} does not serve {model!r}; it serves {", ".join(m["id"] for m in models)}')
        template = request_template(info, n, prompt, fmt, response)
        start = time.perf_counter()
        for i in range(warmup_requests):
            client.post('/v1/generate', json={**template, 'seed': i}).raise_for_status()
        warmup_s = time.perf_counter() - start
    rows = []
    for level, c in enumerate(concurrencies):
        processes, seed_base = min(client_processes, c), (level + 1) * 10 ** 9
        shares = zip(even_split(c, processes), even_split(max_requests, processes))
        tally = measure_in_processes(closed_loop, [(url, clients, duration, cap, template, timeout, seed_base + i, processes, headers)
                                                   for i, (clients, cap) in enumerate(shares)])
        rows.append(row := level_row(info, c, n, tally, processes))
        log(f'concurrency {c:>4}: {_outcome(row)}')
    for step, rate in enumerate(rates):
        seed, seed_base = arrival_seed + step, (len(concurrencies) + step + 1) * 10 ** 9
        schedules, window = process_schedules(rate, duration, seed, client_processes, max_requests)
        before = scrape_batch_sizes(url, info['id'], headers, timeout)
        tally = measure_in_processes(rate_step, [(url, schedule, template, timeout, seed_base + i, client_processes, headers)
                                                 for i, schedule in enumerate(schedules)])
        after = scrape_batch_sizes(url, info['id'], headers, timeout)
        rows.append(row := rate_row(info, rate, seed, n, window, tally, before, after, client_processes))
        batches = f', mean batch {row["mean_batch_size"]:.1f}' if row.get('mean_batch_size') else ''
        log(f'rate {rate:>6g}/s (sent {row["sent_rps"]:.1f}/s, lag p99 {row.get("send_lag_p99_ms", 0):.1f} ms{batches}): '
            f'{_outcome(row)}')
    settings = {'url': url, 'model': info['id'], 'server_backend': info.get('backend'), 'server_device': info.get('device'),
                'server_devices': scrape_devices(url, info['id'], headers, timeout),     # every GPU that answered (--devices)
                'server_precision': info.get('precision'), 'resolution': info.get('resolution'),
                'condition': info.get('condition', {}).get('kind'), 'concurrency': list(concurrencies), 'rates_rps': list(rates),
                'arrival_seed': arrival_seed, 'duration_s': duration, 'max_requests_per_level': max_requests, 'n': n,
                'timeout_s': timeout, 'deadline_ms': deadline_ms, 'warmup_requests': warmup_requests,
                'warmup_s': round(warmup_s, 3),
                'client_processes': client_processes,
                'client': f'aiohttp {aiohttp.__version__} (asyncio, keep-alive; closed loop per concurrency, open loop Poisson per rate; '
                          + ('one process)' if client_processes == 1 else f'{client_processes} spawned processes started together, '
                             'each with its share of a level\'s clients or an independent Poisson stream at rate/processes)'),
                'format': fmt, 'response': response,
                'endpoint': f'POST /v1/generate ({fmt}, {"JSON with base64 images" if response == "b64" else "binary body"})'}
    return info, settings, rows
