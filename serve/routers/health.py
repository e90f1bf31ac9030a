"""Liveness (the process answers) and readiness (every model warm and its backend healthy)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve.deps import State
from serve.state import probe_unhealthy

router = APIRouter(tags=['health'])


@router.get('/healthz')
@router.head('/healthz', include_in_schema=False)     # load balancers probe with HEAD: the same status, no body
async def healthz():
    return {'status': 'ok'}


@router.get('/readyz')
@router.head('/readyz', include_in_schema=False)
async def readyz(state: State):
    await probe_unhealthy(state, timeout=4)     # recover without live traffic (a load balancer may have stopped sending any)
    models = {m.id: {'warm': m.backend.warm or not state.settings.warmup, 'healthy': m.healthy,
                     **({'replicas': {r.device: {'serving': r in m.serving, 'healthy': r.batcher.healthy,
                                                 **({'warm_error': r.warm_error} if r.warm_error else {})}
                                      for r in m.replicas}} if len(m.replicas) > 1 else {})}
              for m in state.models.values()}
    ready = state.ready and all(v['warm'] and v['healthy'] for v in models.values())
    return JSONResponse({'ready': ready, 'models': models}, status_code=200 if ready else 503)
