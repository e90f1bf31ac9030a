"""The generation step every generating route shares: check limits, build the model's inputs, queue them on its
micro-batcher, wait (or give up if the client leaves), and encode the images."""

import asyncio
import base64
import concurrent.futures
import contextlib
import math
import os
import time

from serve.batcher import BackendFailed, DeadlineExpired, DeadlineUnmeetable, QueueFull
from serve.conditions import RequestError, image_metadata
from serve.errors import ApiError
from serve.images import encode


async def wait_or_disconnect(request, awaitable):
    """Wait for the batcher, but give the work up if the client goes away (its jobs are then skipped).

    A request still waiting after 0.25 s awaits its client's disconnect rather than polling for it: once the body is
    read, the server's receive() answers only when the client leaves. Polling Starlette's is_disconnected() every
    0.25 s set up an anyio cancel scope per poll (up to a quarter of the loop's py-spy samples at n=16 on a 2-core
    CPU, though a paired A/B there showed no CPU saved per request: bench/results/cpu-2core-amd-epyc/
    2026-12-07-serve-cpu-per-request.json); a disconnect is now seen at once. Shorter waits never look."""
    task = asyncio.ensure_future(awaitable)
    watch = None
    try:
        await asyncio.wait({task}, timeout=0.25)
        while not task.done():
            if request is None:
                return await task
            watch = watch or asyncio.ensure_future(request.receive())
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                break
            if watch.result().get('type') == 'http.disconnect':
                task.cancel()
                raise ApiError(499, 'client_disconnected', 'the client closed the connection')
            # Any other message (a server that sends more after the body): look again after a pause, as polling did.
            await asyncio.wait({task}, timeout=0.25)
            watch = None
        return task.result()
    finally:
        for pending in (task, watch):
            if pending is not None and not pending.done():
                pending.cancel()


DEADLINE_HEADER = 'X-Request-Deadline-Ms'


def deadline_seconds(settings, request):
    """How long this request may take: its X-Request-Deadline-Ms header, else the server default; capped by the max."""
    raw = request.headers.get(DEADLINE_HEADER) if request is not None else None
    if raw is None:
        ms = settings.deadline_ms
    else:
        try:
            ms = float(raw)
        except ValueError:
            ms = math.nan
        if not ms > 0 or math.isinf(ms):
            raise ApiError(400, 'invalid_request', f'{DEADLINE_HEADER} must be a positive number of milliseconds')
    return min(ms, settings.max_deadline_ms) / 1000


async def make_images(state, model, n, seed=None, class_label=None, class_name=None, prompt=None, request=None, seed_b=None, mix=None):
    """n images from `model`: (images, seeds, per-image metadata, timings in ms). Every failure is an ApiError."""
    settings, metrics = state.settings, state.metrics
    deadline_s, arrived = deadline_seconds(settings, request), time.perf_counter()
    if n > settings.max_n:
        raise ApiError(400, 'invalid_request', f'n={n} is over this server\'s limit of {settings.max_n}', param='n')
    if prompt is not None and len(prompt) > settings.max_prompt_chars:
        raise ApiError(400, 'invalid_request', f'prompt longer than {settings.max_prompt_chars} characters', param='prompt')
    replica = model.replica_for(n)         # the device that would finish it first
    try:
        fixed_class = model.check_request(n, seed, class_label, class_name, prompt, seed_b)   # bad: its 4xx, not a 429
        # Refused now if it would be refused at submit: an overloaded server spends nothing on it (no noise, no prompt
        # encoding; H100, 2026-12-07: at 130% of saturation, 429s took the app 60-150 ms when refused after both).
        with _refusals():
            replica.batcher.admit(n, deadline_s)
        embedding = None
        if model.kind == 'text' and prompt and prompt.strip():
            embedding = await model.prompts.embed(prompt)          # batched with other requests' new prompts
        # Seeds -> noise stays on the event loop. In the pool it freed the loop but fought the batcher's thread for the
        # GIL: on an H100 (2026-12-06, ddpmpp, n=16) closed-loop c=32 fell from 6,161 to 3,968 img/s and the generate
        # step itself rose from 20 to 30 ms (bench/results/nvidia-h100-80gb-hbm3/2026-12-06-triton-mode/).
        inputs, seeds, meta = model.build_inputs(n, seed, fixed_class, prompt, embedding, seed_b, mix)
    except RequestError as e:
        raise ApiError(e.status, e.code, str(e), param=e.param) from None
    started = time.perf_counter()
    remaining_s = deadline_s - (started - arrived)           # prompt encoding has used some of it
    queue = metrics.queue.labels(model.id, replica.device)    # kept current at both ends: an autoscaler reads it
    queue.set(replica.batcher.queued_images + n)              # this request's images included
    try:
        with _refusals():
            images, queue_s, run_s = await asyncio.wait_for(
                wait_or_disconnect(request, replica.batcher.submit(inputs, remaining_s)), settings.request_timeout_s)
    except DeadlineExpired as e:
        raise ApiError(504, 'deadline_exceeded', f'{e}; nothing was generated') from None
    except asyncio.TimeoutError:
        raise ApiError(504, 'timeout', f'generation took longer than {settings.request_timeout_s}s') from None
    except BackendFailed as e:
        raise ApiError(503, 'backend_failed', f'the {model.backend.name} backend failed: {e}', {'Retry-After': '5'}) from None
    finally:
        queue.set(replica.batcher.queued_images)
    total = time.perf_counter() - started
    metrics.latency.labels(model.id, model.backend.name).observe(total)
    return images, seeds, meta, {'queue_ms': 1000 * queue_s, 'generate_ms': 1000 * run_s, 'total_ms': 1000 * total}


@contextlib.contextmanager
def _refusals():
    """The batcher's refusals as the API answers them (admit and submit raise the same ones)."""
    try:
        yield
    except DeadlineUnmeetable as e:
        raise ApiError(429, 'deadline_unmeetable', f'the server is busy: {e}', {'Retry-After': str(e.retry_after)}) from None
    except QueueFull as e:
        raise ApiError(429, 'overloaded', 'the server is busy; try again shortly', {'Retry-After': str(e.retry_after)}) from None
    except ValueError as e:      # more images than the queue can ever hold
        raise ApiError(400, 'invalid_request', str(e)) from None


# Encoding runs here, never on the event loop: Pillow's zlib/libjpeg release the GIL, so requests encode in parallel
# while the loop keeps answering (health checks included). Work as small as one thumbnail stays on the loop: a pool
# round trip (about 0.1 ms on a 2-core CPU) costs more than encoding it (a 32x32 PNG: 0.03 ms, its .npy: 0.01 ms), and
# that is what a lone n=1 request would pay on top of its generation.
ENCODE_POOL = concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix='sida-encode')
PIXELS_PER_TASK = 1 << 18         # small images go to the pool in chunks: one task per image would cost more than it encodes
INLINE_BYTES = 4096               # uint8 pixels of a request encoded on the loop itself (one image up to 36x36 RGB)


def _encode_chunk(model_id, images, seeds, meta, fmt, quality):
    return [encode(img, fmt, image_metadata(model_id, s, **m), quality) for img, s, m in zip(images, seeds, meta)]


async def encoded(model, images, seeds, meta, fmt, quality=95):
    """Each image as file bytes in `fmt`, carrying model, seed and condition as metadata (PNG text chunks), encoded in
    the pool. Per request, after its batch: one request's encoding never touches another's."""
    if sum(image.nbytes for image in images) <= INLINE_BYTES:
        return _encode_chunk(model.id, images, seeds, meta, fmt, quality)
    per_task = max(1, PIXELS_PER_TASK // max(1, images[0].size))
    loop = asyncio.get_running_loop()
    chunks = [loop.run_in_executor(ENCODE_POOL, _encode_chunk, model.id, images[i:i + per_task], seeds[i:i + per_task],
                                   meta[i:i + per_task], fmt, quality) for i in range(0, len(images), per_task)]
    return [blob for chunk in await asyncio.gather(*chunks) for blob in chunk]


async def in_pool(fn, *args, nbytes):
    """Other CPU work on a response (zipping, a batch's .npy) off the event loop too, unless `nbytes` is tiny."""
    if nbytes <= INLINE_BYTES:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(ENCODE_POOL, fn, *args)


def b64(blob):
    return base64.b64encode(blob).decode()
