"""GET /v1/models: what this server serves."""

from fastapi import APIRouter

from serve.deps import Authorized, State
from serve.schemas import ModelList

router = APIRouter(tags=['models'], dependencies=[Authorized])


@router.get('/v1/models', response_model=ModelList)
async def list_models(state: State):
    return {'object': 'list', 'data': [m.info() for m in state.models.values()]}
