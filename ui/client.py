"""The demo's only way to the models: sida's HTTP API, over the network or in-process (the same ASGI app).

Every failure becomes an `ApiError` whose message a person can read: the API's own JSON error message, or what
went wrong on the way (server down, timeout). The page shows that text, never a traceback.
"""

import asyncio
import base64
import time
from dataclasses import dataclass

import httpx

MODELS_TTL_S = 30.0     # a standalone UI may outlive a server restart; model lists are re-read this often


class ApiError(Exception):
    pass


@dataclass
class Picture:
    """One generated image: its bytes as the API encoded them (PNG text chunks kept) and the API's JSON item
    about it (seed, format, class_name | prompt, seed_b, mix: whatever the API says), without the base64."""
    data: bytes
    item: dict

    @classmethod
    def from_api(cls, item):
        return cls(base64.b64decode(item['b64']), {k: v for k, v in item.items() if k != 'b64'})


@dataclass
class Generation:
    model: str
    backend: str
    pictures: list[Picture]
    queue_ms: float
    generate_ms: float
    server_ms: float          # the API's own total (queue + batch + generate), from its `timings`
    round_trip_ms: float      # measured here: request out to response parsed


class SidaApi:
    def __init__(self, base_url, api_key=None, transport=None, timeout=60.0):
        self.base_url, self.api_key, self.transport, self.timeout = base_url.rstrip('/'), api_key, transport, timeout
        self._models = {}     # api key -> (time read, list)

    @classmethod
    def in_process(cls, app):
        """Call `app` directly through ASGI: no port to know, no socket; the API's middleware, auth and batching still apply."""
        return cls('http://sida.in-process', transport=httpx.ASGITransport(app=app, raise_app_exceptions=False))

    def describe(self):
        return 'this server (in-process)' if self.transport is not None else self.base_url

    async def _request(self, method, path, api_key=None, **kwargs):
        key = api_key or self.api_key
        headers = {'Authorization': f'Bearer {key}'} if key else {}
        try:
            # One client per call: handlers may run on different event loops (mounted vs. standalone), a pool may not.
            async with httpx.AsyncClient(base_url=self.base_url, transport=self.transport, timeout=self.timeout) as client:
                response = await client.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise ApiError(f'the sida API at {self.describe()} did not answer within {self.timeout:.0f} s') from None
        except httpx.HTTPError as e:
            raise ApiError(f'cannot reach the sida API at {self.describe()}: {e or type(e).__name__}') from None
        if response.status_code >= 400:
            raise ApiError(error_message(response))
        return response

    async def models(self, api_key=None):
        """GET /v1/models (cached briefly): a list of dicts with id, resolution, condition, backend, device, ..."""
        cached = self._models.get(api_key)
        if cached and time.monotonic() - cached[0] < MODELS_TTL_S:
            return cached[1]
        data = (await self._request('GET', '/v1/models', api_key)).json()['data']
        self._models[api_key] = (time.monotonic(), data)
        return data

    async def model(self, model_id, api_key=None):
        models = await self.models(api_key)
        for m in models:
            if m['id'] == model_id:
                return m
        if not model_id:
            raise ApiError('pick a model first')
        raise ApiError(f'unknown model {model_id!r}; this server has: {", ".join(m["id"] for m in models)}')

    async def generate(self, api_key=None, **body):
        """POST /v1/generate with `body` (model, class_name | prompt, n, seed, seed_b, mix, ...) as PNGs in JSON."""
        started = time.perf_counter()
        response = await self._request('POST', '/v1/generate', api_key, json={**body, 'format': 'png', 'response': 'b64'})
        data = response.json()
        round_trip = 1000 * (time.perf_counter() - started)
        pictures = [Picture.from_api(item) for item in data['images']]
        t = data['timings']
        return Generation(data['model'], data['backend'], pictures, t['queue_ms'], t['generate_ms'], t['total_ms'], round_trip)

    async def generate_many(self, bodies, api_key=None):
        """Several requests at once: the server's micro-batcher runs them as one batch."""
        return await asyncio.gather(*(self.generate(api_key, **body) for body in bodies))


def error_message(response):
    """The API's {"error": {"message"}} as one line with its status, or the status alone for non-sida replies."""
    try:
        message = response.json()['error']['message']
    except (ValueError, KeyError, TypeError):
        message = (response.text or response.reason_phrase or '').strip()[:200] or 'no details'
    return f'{message} (HTTP {response.status_code})'
