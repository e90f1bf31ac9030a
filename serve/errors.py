"""Every error the API sends is JSON {"error": {"code", "message"}} with the right status; no traceback reaches a client."""

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.schemas import ErrorResponse

log = logging.getLogger('sida.serve')

# Documented on every operation (the OpenAPI page shows the error shape once for all).
ERROR_RESPONSES = {status: {'model': ErrorResponse} for status in (400, 401, 404, 413, 422, 429, 503)}


class ApiError(Exception):
    """Raised anywhere in a request; answered as `status` with a machine `code`, a readable `message` and `headers`."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_response(status, code, message, headers=None, request_id=None):
    body = {'error': {'code': code, 'message': message}}
    headers = dict(headers or {})
    if request_id:
        headers['X-Request-ID'] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


def add_error_handlers(app, metrics):
    def request_id(request):
        return getattr(request.state, 'request_id', None)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        metrics.errors.labels(e.code).inc()
        return error_response(e.status, e.code, e.message, e.headers, request_id(request))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = '.'.join(str(x) for x in first.get('loc', ()) if x != 'body')
        message = f'{where}: {first.get("msg", "invalid request")}' if where else first.get('msg', 'invalid request')
        metrics.errors.labels('invalid_request').inc()
        return error_response(422, 'invalid_request', message, request_id=request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        code = {404: 'not_found', 405: 'method_not_allowed'}.get(e.status_code, 'http_error')
        return error_response(e.status_code, code, str(e.detail), request_id=request_id(request))

    @app.exception_handler(Exception)
    async def unexpected(request, e):
        log.exception('unhandled error')
        metrics.errors.labels('internal').inc()
        return error_response(500, 'internal', 'internal error (see the server log)', request_id=request_id(request))
