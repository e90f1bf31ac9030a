"""GET /v1/models and /v1/models/{id}: what this server serves (OpenAI's model objects, plus sida's details)."""

from fastapi import APIRouter

from serve.deps import Authorized, State
from serve.schemas import ModelInfo, ModelList

router = APIRouter(tags=['models'], dependencies=[Authorized])


@router.get('/v1/models', response_model=ModelList)
async def list_models(state: State):
    return {'object': 'list', 'data': [m.info() for m in state.models.values()]}


@router.get('/v1/models/{model_id:path}', response_model=ModelInfo)
async def get_model(model_id: str, state: State):
    return state.pick(model_id).info()
