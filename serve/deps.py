"""The handlers' dependencies, as `Annotated` types: the app state, the caller's key (auth) and the rate limit.
The model a request names is `state.pick(body.model)` in the handler: a dependency taking the body would make
FastAPI validate the body a second time. All are `async def`: they never block, and FastAPI would run a plain `def`
on a worker thread, three thread hops per request."""

from typing import Annotated

from fastapi import Depends, Request

from serve.errors import ApiError
from serve.state import AppState


async def app_state(request: Request) -> AppState:
    return request.app.state.sida


State = Annotated[AppState, Depends(app_state)]


async def caller(request: Request, state: State) -> str:
    """Who is asking: the API key when the server has keys (401 without a valid one), else the client address."""
    if not state.keys:
        return request.client.host if request.client else 'unknown'
    header = request.headers.get('Authorization', '')
    token = header[7:].strip() if header.lower().startswith('bearer ') else None
    if token not in state.keys:
        raise ApiError(401, 'unauthorized', 'missing or invalid API key (Authorization: Bearer <key>)', {'WWW-Authenticate': 'Bearer'})
    return token


Caller = Annotated[str, Depends(caller)]


async def rate_limited(key: Caller, state: State) -> str:
    state.limiter.check(key)
    return key


# Authenticated and within the rate limit; routers put it in `dependencies=[...]`.
Authorized = Depends(rate_limited)

