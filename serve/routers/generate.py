"""POST /v1/generate: images as base64 PNG/JPEG/WebP/.npy in JSON, or the bytes (one image), a zip (several), or for
format npy one uint8 NHWC array of them all."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serve.deps import Authorized, State
from serve.generation import b64, encoded, in_pool, make_images
from serve.images import MEDIA_TYPES, npy_bytes, zip_images
from serve.schemas import GenerateRequest, GenerateResponse

router = APIRouter(tags=['generate'], dependencies=[Authorized])


BINARY = {'image/png': {}, 'image/jpeg': {}, 'image/webp': {}, 'application/zip': {}, 'application/x-npy': {}}


@router.post('/v1/generate', response_model=GenerateResponse, responses={200: {'content': BINARY}})
async def generate(body: GenerateRequest, state: State, request: Request):
    model = state.pick(body.model)
    images, seeds, meta, timings = await make_images(state, model, body.n, body.seed, body.class_label, body.class_name, body.prompt,
                                                  request=request, seed_b=body.seed_b, mix=body.mix)
    headers = {'X-Seeds': ','.join(map(str, seeds)), 'X-Backend': model.backend.name,
               'Server-Timing': f'queue;dur={timings["queue_ms"]:.1f}, generate;dur={timings["generate_ms"]:.1f}, '
                                f'total;dur={timings["total_ms"]:.1f}'}
    if body.response == 'binary' and body.format == 'npy':     # the pixels as they are: no per-image files
        pixels = await in_pool(npy_bytes, images, nbytes=images.nbytes)
        return Response(pixels, media_type=MEDIA_TYPES['npy'], headers=headers)
    blobs = await encoded(model, images, seeds, meta, body.format)
    if body.response == 'binary':
        if len(blobs) == 1:
            return Response(blobs[0], media_type=MEDIA_TYPES[body.format], headers=headers)
        names = [f'seed{s}.{body.format}' for s in seeds]
        archive = await in_pool(zip_images, list(zip(names, blobs)), nbytes=sum(map(len, blobs)))
        return Response(archive, media_type='application/zip', headers=headers)
    return {'model': model.id, 'backend': model.backend.name, 'request_id': request.state.request_id, 'timings': timings,
            'images': [{'seed': s, 'b64': b64(b), 'format': body.format, **m} for s, b, m in zip(seeds, blobs, meta)]}
