"""POST /v1/images/generations: the OpenAI images API shape (b64_json only; the prompt is a class name for class models)."""

import time

from fastapi import APIRouter, Request

from serve.conditions import quoted
from serve.deps import Authorized, State
from serve.errors import ApiError
from serve.generation import b64, encoded, make_images
from serve.schemas import CLASS_NAME_MAX, OpenAIImageRequest, OpenAIImageResponse

router = APIRouter(tags=['generate'], dependencies=[Authorized])


@router.post('/v1/images/generations', response_model=OpenAIImageResponse)
async def openai_images(body: OpenAIImageRequest, state: State, request: Request):
    model = state.pick(body.model)
    size = f'{model.config.image_resolution}x{model.config.image_resolution}'
    if body.size is not None and body.size != size:
        raise ApiError(400, 'invalid_request', f'size {quoted(body.size)} is not available: model {model.id} makes {size} images',
                       param='size')
    if body.response_format != 'b64_json':
        raise ApiError(400, 'invalid_request', 'response_format "url" is not supported; use "b64_json"', param='response_format')
    if body.output_compression is not None and body.output_format == 'png':
        raise ApiError(400, 'invalid_request', 'output_compression applies to jpeg and webp, not png', param='output_compression')
    if model.kind == 'class' and len(body.prompt) > CLASS_NAME_MAX:   # the prompt is a class name: /v1/generate's limit
        raise ApiError(400, 'invalid_request', f'prompt: a class name has at most {CLASS_NAME_MAX} characters', param='prompt')
    condition = {'prompt': body.prompt} if model.kind == 'text' else {'class_name': body.prompt} if model.kind == 'class' else {}
    try:
        images, seeds, meta, _ = await make_images(state, model, body.n, request=request, **condition)
    except ApiError as e:
        if e.param == 'class_name':         # here the class name came in as the prompt
            e.param = 'prompt'
        raise
    quality = 95 if body.output_compression is None else body.output_compression
    blobs = await encoded(model, images, seeds, meta, body.output_format, quality)
    return {'created': int(time.time()), 'output_format': body.output_format, 'size': size,
            'data': [{'b64_json': b64(blob), 'revised_prompt': m.get('prompt') or m.get('class_name')} for blob, m in zip(blobs, meta)]}
