"""ASGI middleware: the body size limit, and the request context (id, log line, metric)."""

import json
import re
import time
import uuid

from serve.errors import error_response, log


class BodyLimit:
    """Refuse bodies over `limit` bytes (413) before they are read whole."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        length = dict(scope.get('headers') or []).get(b'content-length')
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self.too_large(scope, receive, send)
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
                return await self.too_large(scope, receive, send)
        body = b''.join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {'type': 'http.request', 'body': body, 'more_body': False}
        return await self.app(scope, replay, send)

    def too_large(self, scope, receive, send):
        # Made when needed: a JSONResponse per request (its JSON and headers) was 1% of the event loop's time (n=1, CPU).
        return error_response(413, 'payload_too_large', f'request body over {self.limit} bytes')(scope, receive, send)


# A client's X-Request-ID is kept only if it is a short printable token; anything else (invalid UTF-8, control
# characters, a kilobyte of text) is replaced by a fresh id rather than failing the request or reaching the log.
REQUEST_ID = re.compile(rb'[A-Za-z0-9._:/+=-]{1,64}')


def request_id(header):
    return header.decode('ascii') if header and REQUEST_ID.fullmatch(header) else uuid.uuid4().hex[:16]


class RequestContext:
    """A request id (X-Request-ID in and out), one JSON log line and the request metric.

    Pure ASGI rather than @app.middleware('http'), which would hide client disconnects from the handlers.
    """

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        rid = request_id(dict(scope.get('headers') or []).get(b'x-request-id'))
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
