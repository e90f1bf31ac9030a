"""`sida bench http`: load on a running `sida serve` (POST /v1/generate): closed-loop concurrency levels, then
open-loop rates (bench/open_loop.py), one at a time.

At concurrency c, c clients each send a request, wait for the answer, and send the next, for `duration`
seconds or until `max_requests` were sent, whichever comes first; throughput is the images of successful
answers over the level's wall time. Errors are counted by HTTP status (and by exception name for
connection failures), never retried. Loopback servers only, unless `allow_remote`: this is a load
generator, not something to point at other people's machines.
"""

import asyncio
import collections
import time
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


CLIENTS_PER_POOL = 8     # httpx's pool costs grow with its size: many small pools keep the client off the critical path


async def _level(url, info, concurrency, duration, max_requests, template, timeout, seed_base, headers):
    import httpx
    latencies, codes, server_ms = [], collections.Counter(), {}
    sent = 0
    deadline = time.perf_counter() + duration

    async def worker(client):
        nonlocal sent
        while time.perf_counter() < deadline and sent < max_requests:
            seed = seed_base + sent
            sent += 1
            start = time.perf_counter()
            try:
                r = await client.post('/v1/generate', json={**template, 'seed': seed})
            except httpx.HTTPError as e:
                codes[type(e).__name__] += 1
                continue
            elapsed = time.perf_counter() - start
            codes[str(r.status_code)] += 1
            if r.status_code == 200:
                latencies.append(elapsed)
                for key, ms in server_split(r).items():
                    server_ms.setdefault(key, []).append(ms / 1000)

    sizes = [min(CLIENTS_PER_POOL, concurrency - i) for i in range(0, concurrency, CLIENTS_PER_POOL)]
    clients = [httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers,
                                 limits=httpx.Limits(max_connections=size, max_keepalive_connections=size)) for size in sizes]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for client, size in zip(clients, sizes) for _ in range(size)))
        wall = time.perf_counter() - started
    finally:
        for client in clients:
            await client.aclose()
    ok = codes.get('200', 0)
    errors = {k: v for k, v in sorted(codes.items()) if k != '200'}
    n = template['n']
    row = {'kind': 'http', 'backend': info.get('backend'), 'model': info['id'], 'concurrency': concurrency, 'n': n,
           'requests': sum(codes.values()), 'ok': ok, 'errors': errors, 'error_count': sum(errors.values()),
           'duration_s': wall, 'requests_per_s': ok / wall, 'images_per_s': ok * n / wall}
    row.update(latency_summary(latencies, server_ms))
    return row


def _outcome(row):
    latency = f'p50 {row["p50_ms"]:.1f} ms, p99 {row["p99_ms"]:.1f} ms' if 'p50_ms' in row else 'no successful request'
    return f'{row["images_per_s"]:8.1f} img/s, {latency}, {row["requests"]} requests, {row["error_count"]} errors {row["errors"] or ""}'


def run_http(url, concurrencies, duration=10.0, model=None, n=1, max_requests=20000, timeout=60.0, prompt='a photo of a cat',
             allow_remote=False, warmup_requests=4, api_key=None, log=print, rates=(), arrival_seed=0, deadline_ms=None,
             fmt='png', response='b64'):
    """Measure every concurrency level, then every open-loop rate; returns (server description, settings, rows)."""
    import httpx

    from bench.open_loop import rate_step
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
        row = asyncio.run(_level(url, info, c, duration, max_requests, template, timeout, (level + 1) * 10 ** 9, headers))
        rows.append(row)
        log(f'concurrency {c:>4}: {_outcome(row)}')
    for step, rate in enumerate(rates):
        row = asyncio.run(rate_step(url, info, rate, duration, max_requests, template, timeout, arrival_seed + step,
                                    (len(concurrencies) + step + 1) * 10 ** 9, headers))
        rows.append(row)
        batches = f', mean batch {row["mean_batch_size"]:.1f}' if row.get('mean_batch_size') else ''
        log(f'rate {rate:>6g}/s (sent {row["sent_rps"]:.1f}/s, lag p99 {row.get("send_lag_p99_ms", 0):.1f} ms{batches}): '
            f'{_outcome(row)}')
    settings = {'url': url, 'model': info['id'], 'server_backend': info.get('backend'), 'server_device': info.get('device'),
                'server_precision': info.get('precision'), 'resolution': info.get('resolution'),
                'condition': info.get('condition', {}).get('kind'), 'concurrency': list(concurrencies), 'rates_rps': list(rates),
                'arrival_seed': arrival_seed, 'duration_s': duration, 'max_requests_per_level': max_requests, 'n': n,
                'timeout_s': timeout, 'deadline_ms': deadline_ms, 'warmup_requests': warmup_requests,
                'warmup_s': round(warmup_s, 3),
                'client': f'httpx {httpx.__version__} (asyncio, keep-alive; closed loop per concurrency, open loop Poisson per rate)',
                'format': fmt, 'response': response,
                'endpoint': f'POST /v1/generate ({fmt}, {"JSON with base64 images" if response == "b64" else "binary body"})'}
    return info, settings, rows
