"""Liveness (the process answers) and readiness (every model warm and its backend healthy)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serve.deps import State

router = APIRouter(tags=['health'])


@router.get('/healthz')
@router.head('/healthz', include_in_schema=False)     # load balancers probe with HEAD: the same status, no body
async def healthz():
    return {'status': 'ok'}


@router.get('/readyz')
@router.head('/readyz', include_in_schema=False)
async def readyz(state: State):
    for m in state.models.values():
        for replica in m.serving:
            if not replica.batcher.healthy:   # recover without live traffic (a load balancer may have stopped sending any)
                embedding = await m.prompts.embed('a photo') if m.kind == 'text' else None
                inputs, _, _ = m.build_inputs(1, seed=0, prompt='a photo' if m.kind == 'text' else None,
                                              text_embedding=embedding)
                await replica.batcher.probe(inputs, timeout=10)
    models = {m.id: {'warm': m.backend.warm or not state.settings.warmup, 'healthy': m.healthy,
                     **({'replicas': {r.device: {'serving': r in m.serving, 'healthy': r.batcher.healthy}
                                      for r in m.replicas}} if len(m.replicas) > 1 else {})}
              for m in state.models.values()}
    ready = state.ready and all(v['warm'] and v['healthy'] for v in models.values())
    return JSONResponse({'ready': ready, 'models': models}, status_code=200 if ready else 503)
