"""The FastAPI app: lifespan loads and warms the models; thin handlers parse, batch and encode.

Every error is JSON {"error": {"code", "message"}} with the right status; no traceback reaches a client.
"""

import asyncio
import base64
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.batcher import BackendFailed, QueueFull
from serve.images import MEDIA_TYPES, encode, zip_images
from serve.metrics import Metrics
from serve.schemas import ErrorResponse, GenerateRequest, GenerateResponse, ModelList, OpenAIImageRequest, OpenAIImageResponse
from serve.served_model import RequestError, ServedModel
from serve.settings import Settings

log = logging.getLogger('sida.serve')


class ApiError(Exception):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status, code, message, headers=None, request_id=None):
    body = {'error': {'code': code, 'message': message}}
    headers = dict(headers or {})
    if request_id:
        headers['X-Request-ID'] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes (413) before they are read whole."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        too_large = error_response(413, 'payload_too_large', f'request body over {self.limit} bytes')
        length = dict(scope.get('headers') or []).get(b'content-length')
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        # No (trusted) length, e.g. chunked: read up to the limit here, then replay the body to the app.
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message['type'] == 'http.disconnect':
                return
            chunks.append(message.get('body', b''))
            seen += len(chunks[-1])
            more = message.get('more_body', False)
            if seen > self.limit:
                return await too_large(scope, receive, send)
        body = b''.join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {'type': 'http.request', 'body': body, 'more_body': False}
        return await self.app(scope, replay, send)


class RequestContext:
    """ASGI middleware: a request id (X-Request-ID in and out), one JSON log line and the request metric.

    Pure ASGI rather than @app.middleware('http'), which would hide client disconnects from the handlers.
    """

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        rid = dict(scope.get('headers') or []).get(b'x-request-id', b'').decode()[:64] or uuid.uuid4().hex[:16]
        scope.setdefault('state', {})['request_id'] = rid
        status = {'code': 500}
        started = time.perf_counter()

        async def send_with_id(message):
            if message['type'] == 'http.response.start':
                status['code'] = message['status']
                headers = [h for h in message.get('headers', []) if h[0].lower() != b'x-request-id']
                message = {**message, 'headers': headers + [(b'x-request-id', rid.encode())]}
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get('route')
            self.metrics.requests.labels(getattr(route, 'path', 'unmatched'), str(status['code'])).inc()
            log.info(json.dumps({'request_id': rid, 'method': scope.get('method'), 'path': scope.get('path'),
                                 'status': status['code'], 'ms': round(1000 * (time.perf_counter() - started), 1)}))


class RateLimiter:
    """A token bucket per API key (or client address): `per_minute` requests, refilled continuously."""

    def __init__(self, per_minute):
        self.per_minute, self.buckets = per_minute, {}

    def check(self, key):
        if not self.per_minute:
            return
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.per_minute, now))
        tokens = min(self.per_minute, tokens + (now - last) * self.per_minute / 60)
        if tokens < 1:
            raise ApiError(429, 'rate_limited', f'more than {self.per_minute} requests per minute for this key',
                           {'Retry-After': str(max(1, round((1 - tokens) * 60 / self.per_minute)))})
        self.buckets[key] = (tokens - 1, now)


def create_app(settings: Settings, models=None):
    """models: already-built ServedModel objects (tests); otherwise built from settings.bundles at start-up."""
    metrics = Metrics()
    state = {'models': {}, 'ready': False}

    @asynccontextmanager
    async def lifespan(app):
        loaded = models if models is not None else [ServedModel(b, settings, on_batch=metrics.on_batch) for b in settings.bundles]
        if not loaded:
            raise RuntimeError('no models to serve: give at least one bundle')
        for m in loaded:
            if settings.warmup:
                await asyncio.get_running_loop().run_in_executor(None, m.backend.warmup)
            m.batcher.start()
            state['models'][m.id] = m
        state['ready'] = True
        log.info(json.dumps({'event': 'ready', 'models': [m.info() for m in loaded]}))
        yield
        state['ready'] = False
        for m in loaded:
            await m.batcher.stop()

    app = FastAPI(title='sida', version=__import__('sida').__version__, lifespan=lifespan,
                  description='One-step image generation (SiD / SiDA distilled generators).',
                  responses={400: {'model': ErrorResponse}, 401: {'model': ErrorResponse}, 404: {'model': ErrorResponse},
                             413: {'model': ErrorResponse}, 422: {'model': ErrorResponse}, 429: {'model': ErrorResponse},
                             503: {'model': ErrorResponse}})
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    keys = settings.keys()
    limiter = RateLimiter(settings.rate_limit_per_minute)

    app.add_middleware(RequestContext, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        metrics.errors.labels(e.code).inc()
        return error_response(e.status, e.code, e.message, e.headers, getattr(request.state, 'request_id', None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = '.'.join(str(x) for x in first.get('loc', ()) if x != 'body')
        message = f'{where}: {first.get("msg", "invalid request")}' if where else first.get('msg', 'invalid request')
        metrics.errors.labels('invalid_request').inc()
        return error_response(422, 'invalid_request', message, request_id=getattr(request.state, 'request_id', None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        code = {404: 'not_found', 405: 'method_not_allowed'}.get(e.status_code, 'http_error')
        return error_response(e.status_code, code, str(e.detail), request_id=getattr(request.state, 'request_id', None))

    @app.exception_handler(Exception)
    async def unexpected(request, e):
        log.exception('unhandled error')
        metrics.errors.labels('internal').inc()
        return error_response(500, 'internal', 'internal error (see the server log)', request_id=getattr(request.state, 'request_id', None))

    async def authorize(request: Request):
        key = request.client.host if request.client else 'unknown'
        if keys:
            header = request.headers.get('Authorization', '')
            token = header[7:].strip() if header.lower().startswith('bearer ') else None
            if token not in keys:
                raise ApiError(401, 'unauthorized', 'missing or invalid API key (Authorization: Bearer <key>)',
                               {'WWW-Authenticate': 'Bearer'})
            key = token
        limiter.check(key)

    def pick(model_id):
        if not state['models']:
            raise ApiError(503, 'not_ready', 'models are still loading', {'Retry-After': '5'})
        if model_id is None:
            return next(iter(state['models'].values()))
        if model_id not in state['models']:
            raise ApiError(404, 'model_not_found', f'unknown model {model_id!r}; available: {", ".join(state["models"])}')
        return state['models'][model_id]

    async def wait_or_disconnect(request, awaitable):
        """Wait for the batcher, but give the work up if the client goes away (its jobs are then skipped)."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    return task.result()
                if request is not None and await request.is_disconnected():
                    task.cancel()
                    raise ApiError(499, 'client_disconnected', 'the client closed the connection')
        finally:
            if not task.done():
                task.cancel()

    async def run(model, n, seed=None, class_label=None, class_name=None, prompt=None, request=None, seed_b=None, mix=None):
        if n > settings.max_n:
            raise ApiError(400, 'invalid_request', f'n={n} is over this server\'s limit of {settings.max_n}')
        if prompt is not None and len(prompt) > settings.max_prompt_chars:
            raise ApiError(400, 'invalid_request', f'prompt longer than {settings.max_prompt_chars} characters')
        try:
            embedding = None
            if model.kind == 'text' and prompt and prompt.strip():
                embedding = await model.prompts.embed(prompt)          # batched with other requests' new prompts
            inputs, seeds, meta = model.build_inputs(n, seed, class_label, class_name, prompt, embedding, seed_b, mix)
        except RequestError as e:
            raise ApiError(e.status, e.code, str(e)) from None
        started = time.perf_counter()
        metrics.queue.labels(model.id).set(model.batcher.queued_images)
        try:
            images, queue_s, run_s = await asyncio.wait_for(wait_or_disconnect(request, model.batcher.submit(inputs)),
                                                            settings.request_timeout_s)
        except QueueFull as e:
            raise ApiError(429, 'overloaded', 'the server is busy; try again shortly', {'Retry-After': str(e.retry_after)}) from None
        except asyncio.TimeoutError:
            raise ApiError(504, 'timeout', f'generation took longer than {settings.request_timeout_s}s') from None
        except BackendFailed as e:
            raise ApiError(503, 'backend_unavailable', f'the {model.backend.name} backend failed: {e}', {'Retry-After': '5'}) from None
        except ValueError as e:      # more images than the queue can ever hold
            raise ApiError(400, 'invalid_request', str(e)) from None
        total = time.perf_counter() - started
        metrics.latency.labels(model.id, model.backend.name).observe(total)
        return images, seeds, meta, {'queue_ms': 1000 * queue_s, 'generate_ms': 1000 * run_s, 'total_ms': 1000 * total}

    @app.get('/healthz', tags=['health'])
    async def healthz():
        return {'status': 'ok'}

    @app.get('/readyz', tags=['health'])
    async def readyz():
        for m in state['models'].values():
            if not m.batcher.healthy:   # recover without live traffic (a load balancer may have stopped sending any)
                embedding = await m.prompts.embed('a photo') if m.kind == 'text' else None
                inputs, _, _ = m.build_inputs(1, seed=0, prompt='a photo' if m.kind == 'text' else None, text_embedding=embedding)
                await m.batcher.probe(inputs, timeout=10)
        models_state = {m.id: {'warm': m.backend.warm or not settings.warmup, 'healthy': m.batcher.healthy}
                        for m in state['models'].values()}
        ready = state['ready'] and all(v['warm'] and v['healthy'] for v in models_state.values())
        return JSONResponse({'ready': ready, 'models': models_state}, status_code=200 if ready else 503)

    @app.get('/metrics', tags=['health'])
    async def prometheus():
        for m in state['models'].values():
            if m.prompts is not None:
                metrics.text_calls.labels(m.id).set(m.prompts.calls)
                metrics.text_prompts.labels(m.id).set(m.prompts.encoded)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get('/v1/models', response_model=ModelList, tags=['models'], dependencies=[Depends(authorize)])
    async def list_models():
        return {'object': 'list', 'data': [m.info() for m in state['models'].values()]}

    @app.post('/v1/generate', response_model=GenerateResponse, tags=['generate'], dependencies=[Depends(authorize)],
              responses={200: {'content': {'image/png': {}, 'application/zip': {}}}})
    async def generate(body: GenerateRequest, request: Request):
        model = pick(body.model)
        images, seeds, meta, timings = await run(model, body.n, body.seed, body.class_label, body.class_name, body.prompt,
                                                 request=request, seed_b=body.seed_b, mix=body.mix)
        blobs = [encode(img, body.format, {'model': model.id, 'seed': s, **m}) for img, s, m in zip(images, seeds, meta)]
        headers = {'X-Seeds': ','.join(map(str, seeds)), 'X-Backend': model.backend.name,
                   'Server-Timing': f'queue;dur={timings["queue_ms"]:.1f}, generate;dur={timings["generate_ms"]:.1f}, '
                                    f'total;dur={timings["total_ms"]:.1f}'}
        if body.response == 'binary':
            if len(blobs) == 1:
                return Response(blobs[0], media_type=MEDIA_TYPES[body.format], headers=headers)
            names = [f'seed{s}.{body.format}' for s in seeds]
            return Response(zip_images(zip(names, blobs)), media_type='application/zip', headers=headers)
        return {'model': model.id, 'backend': model.backend.name, 'request_id': request.state.request_id, 'timings': timings,
                'images': [{'seed': s, 'b64': base64.b64encode(b).decode(), 'format': body.format, **m}
                           for s, b, m in zip(seeds, blobs, meta)]}

    @app.post('/v1/images/generations', response_model=OpenAIImageResponse, tags=['generate'], dependencies=[Depends(authorize)])
    async def openai_images(body: OpenAIImageRequest, request: Request):
        model = pick(body.model)
        size = f'{model.config.image_resolution}x{model.config.image_resolution}'
        if body.size is not None and body.size != size:
            raise ApiError(400, 'invalid_request', f'size {body.size!r} is not available: model {model.id} makes {size} images')
        if body.response_format != 'b64_json':
            raise ApiError(400, 'invalid_request', 'response_format "url" is not supported; use "b64_json"')
        kwargs = {'prompt': body.prompt} if model.kind == 'text' else {'class_name': body.prompt} if model.kind == 'class' else {}
        images, seeds, meta, _ = await run(model, body.n, request=request, **kwargs)
        return {'created': int(time.time()),
                'data': [{'b64_json': base64.b64encode(encode(img, 'png', {'model': model.id, 'seed': s, **m})).decode(),
                          'revised_prompt': m.get('prompt') or m.get('class_name')} for img, s, m in zip(images, seeds, meta)]}

    app.state.sida = state
    app.state.metrics = metrics
    app.state.ui = settings.ui and mount_ui(app)
    return app


def mount_ui(app):
    """The Gradio demo at /ui, calling this app's own API in-process. Skipped (with a log line) without gradio,
    so the [serve] extra alone still serves the API."""
    import importlib.util
    if importlib.util.find_spec('gradio') is None:
        log.warning(json.dumps({'event': 'ui_disabled', 'reason': 'gradio is not installed (pip install sida[ui])'}))
        return False
    from ui.mount import mount_in_process
    mount_in_process(app, path='/ui')
    return True
