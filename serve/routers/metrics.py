"""Prometheus metrics at /metrics."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from serve.deps import State

router = APIRouter(tags=['health'])


@router.get('/metrics')
async def prometheus(state: State):
    for m in state.models.values():
        if m.prompts is not None:   # the prompt encoder counts for itself; copied in at scrape time
            state.metrics.text_calls.labels(m.id).set(m.prompts.calls)
            state.metrics.text_prompts.labels(m.id).set(m.prompts.encoded)
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
