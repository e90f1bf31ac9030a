"""Every error the API sends is JSON {"error": {"code", "message", "type", "param"}} with the right status; no
traceback reaches a client. `code` is sida's machine name for the error; `type` and `param` are the fields OpenAI's
clients read (its error type for the status, and the request field at fault or null)."""

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.schemas import ErrorResponse

log = logging.getLogger('sida.serve')

# Documented on every operation (the OpenAPI page shows the error shape once for all).
ERROR_RESPONSES = {status: {'model': ErrorResponse} for status in (400, 401, 404, 413, 422, 429, 503)}

# OpenAI's error `type` for each status; anything else 4xx is an invalid request.
OPENAI_TYPES = {401: 'authentication_error', 403: 'permission_error', 404: 'not_found_error', 429: 'rate_limit_error'}

# Pydantic error types that mean "well-formed, but this value cannot be served": 400, not 422.
BAD_VALUE_TYPES = {'string_unicode'}


class ApiError(Exception):
    """Raised anywhere in a request; answered as `status` with a machine `code`, a readable `message` and `headers`;
    `param`: the request field at fault, when there is one."""

    def __init__(self, status, code, message, headers=None, param=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.param = status, code, message, headers or {}, param


def error_type(status):
    return 'server_error' if status >= 500 else OPENAI_TYPES.get(status, 'invalid_request_error')


def error_response(status, code, message, headers=None, request_id=None, param=None):
    body = {'error': {'code': code, 'message': message, 'type': error_type(status), 'param': param}}
    headers = dict(headers or {})
    if request_id:
        headers['X-Request-ID'] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


BODY_TYPES = ('missing', 'model_attributes_type', 'model_type', 'dict_type')     # pydantic's errors about the body itself


def validation_error(errors, content_type=''):
    """(status, code, message, param) for pydantic's errors: the first one, named by its field."""
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get('loc', ()) if x != 'body']
    if first.get('type') == 'json_invalid':      # loc is the character position, not a field
        return 422, 'invalid_request', f'the body is not valid JSON ({first.get("msg")} at character {".".join(loc)})', None
    if not loc and first.get('type') in BODY_TYPES:     # the body as a whole: absent, or not a JSON object
        if first.get('type') == 'missing':
            return 422, 'invalid_request', 'the request has no body: send a JSON object', None
        if 'json' not in content_type:           # e.g. curl -d without -H, which sends a form
            return 422, 'invalid_request', (f'the body must be a JSON object sent as Content-Type: application/json '
                                            f'(got {content_type or "no Content-Type"})'), None
        return 422, 'invalid_request', 'the body must be a JSON object', None
    param = '.'.join(loc) or None
    if first.get('type') in BAD_VALUE_TYPES:
        return 400, 'invalid_text', f'{param}: not valid Unicode text (a lone surrogate such as \\ud800?)', param
    message = first.get('msg', 'invalid request')
    given = first.get('input')
    if param in ('seed', 'seed_b') and isinstance(given, str) and not given.strip().lstrip('+-').isdigit():   # e.g. "0-3"
        message = f'one integer (image i of the request uses {param} + i), not a string such as {given[:40]!r}'
    return 422, 'invalid_request', f'{param}: {message}' if param else message, param


def add_error_handlers(app, metrics):
    def request_id(request):
        return getattr(request.state, 'request_id', None)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        metrics.errors.labels(e.code).inc()
        return error_response(e.status, e.code, e.message, e.headers, request_id(request), e.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        status, code, message, param = validation_error(e.errors(), request.headers.get('content-type', '').lower())
        metrics.errors.labels(code).inc()
        return error_response(status, code, message, request_id=request_id(request), param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        if e.status_code == 400 and e.__cause__ is not None:
            # FastAPI's "error parsing the body" (too deeply nested JSON, a body that is not UTF-8): the same 422 as
            # any other JSON that does not parse.
            metrics.errors.labels('invalid_request').inc()
            return error_response(422, 'invalid_request', f'the body is not valid JSON ({type(e.__cause__).__name__})',
                                  request_id=request_id(request))
        code = {404: 'not_found', 405: 'method_not_allowed'}.get(e.status_code, 'http_error')
        return error_response(e.status_code, code, str(e.detail), e.headers, request_id=request_id(request))

    @app.exception_handler(Exception)
    async def unexpected(request, e):
        log.exception('unhandled error')
        metrics.errors.labels('internal').inc()
        return error_response(500, 'internal', 'internal error (see the server log)', request_id=request_id(request))
