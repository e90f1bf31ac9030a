"""What the app holds while it runs (typed), and the lifespan that loads and warms the models into it."""

import asyncio
import gc
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from serve.conditions import quoted
from serve.errors import ApiError, log
from serve.load_shedding import LoopLag
from serve.metrics import Metrics
from serve.rate_limit import RateLimiter
from serve.served_model import ServedModel
from serve.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    keys: set[str]                                   # accepted API keys; empty: no authentication
    limiter: RateLimiter
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    lag: LoopLag | None = None                       # how late the event loop runs (serve/load_shedding.py), once started

    def pick(self, model_id):
        """The model a request names (None: the first one)."""
        if not self.models:
            raise ApiError(503, 'not_ready', 'models are still loading', {'Retry-After': '5'})
        if model_id is None:
            return next(iter(self.models.values()))
        if model_id not in self.models:
            raise ApiError(404, 'model_not_found', f'unknown model {quoted(model_id)}; available: {", ".join(self.models)}',
                           param='model')
        return self.models[model_id]


def process_seconds():
    """Seconds since this process started (Linux: its start time in /proc against the boot clock), else None."""
    try:
        with open('/proc/self/stat') as f:
            start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])     # field 22: starttime, clock ticks after boot
        return round(time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf('SC_CLK_TCK'), 2)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def startup_report(model):
    """Where a model's start went: loading (bundle, networks to devices) and warming (per batch size or bucket, per
    replica when there are several)."""
    def warmed(replica):
        described = replica.backend.describe()
        return {'warmup_seconds': described.get('warmup_seconds'), 'warmup_batches': described.get('warmup_batches')}
    report = {'id': model.id, 'load_seconds': model.load_seconds, **warmed(model.replicas[0])}
    if len(model.replicas) > 1:
        report['replicas'] = {r.device: warmed(r) for r in model.replicas}
    return report


def lifespan_for(state: AppState, models=None, devices=None):
    """models: ServedModel objects built already (the CLI, tests); otherwise built from settings.bundles here, with
    one replica per entry of `devices` ([(name in metrics, device)]; None: one on the backend's choice).

    The state also lives on app.state (not only in the lifespan's yielded state), because the in-process UI reaches
    the API through httpx.ASGITransport, whose requests carry no lifespan state."""

    @asynccontextmanager
    async def lifespan(app):
        settings = state.settings
        loaded = models if models is not None else [ServedModel(b, settings, on_batch=state.metrics.on_batch, devices=devices)
                                                    for b in settings.bundles]
        if not loaded:
            raise RuntimeError('no models to serve: give at least one bundle')
        later = []
        state.lag = LoopLag()
        state.lag.start()
        try:
            for m in loaded:
                first, others = m.replicas[0], m.replicas[1:]
                staged = None
                if settings.warmup:     # on the backend thread: where its CUDA graphs will be replayed
                    staged = await first.batcher.on_backend_thread(first.backend.warmup_to_serve)
                m.serve_on(first)
                if not settings.warmup:
                    for replica in others:
                        m.serve_on(replica)
                else:               # logs 'warm' once every bucket of every replica is
                    later.append(asyncio.create_task(warm_the_rest(m, staged)))
                state.models[m.id] = m
            if any(len(m.replicas) > 1 for m in loaded):
                later.append(asyncio.create_task(keep_replicas_healthy(state)))
            state.ready = True
            freeze_startup_objects(full_collection=True)
            log.info(json.dumps({'event': 'ready', 'process_seconds': process_seconds(),
                                 'models': [m.info() for m in loaded], 'startup': [startup_report(m) for m in loaded]}))
            yield
        finally:
            state.ready = False
            gc.unfreeze()       # what the process holds is collected at its exit as usual (no "leaked" reports)
            for task in later:
                task.cancel()
            await asyncio.gather(*later, return_exceptions=True)
            await state.lag.stop()
            for m in loaded:
                for replica in m.replicas:
                    await replica.batcher.stop()
    return lifespan


async def warm_the_rest(model, staged):
    """After ready: the first replica's other compile buckets (staged), then every other replica, each joining the
    model's serving replicas once warm. A bucket warms on its replica's backend thread between batches (a batch
    waits for at most one bucket's warm-up), the helpers' ones once they are done. Replicas warm one after another:
    on one compile they share the cache's warming lock while a bucket is cold. A replica that fails is logged
    ('warm_failed'), kept out of serving and shown in /readyz; the others go on. Logs 'warm' at the end, with the
    failures if any."""
    started = time.perf_counter()
    for i, replica in enumerate(model.replicas):
        try:
            if i > 0:
                staged = await first_bucket(replica)
                model.serve_on(replica)
            await warm_stages(replica, staged)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            replica.warm_error = f'{type(e).__name__}: {e}'[:500]
            log.error(json.dumps({'event': 'warm_failed', 'model': model.id, 'device': replica.device,
                                  'error': replica.warm_error,
                                  'serving_on': {r.device: list(getattr(r.backend, 'usable', [])) for r in model.serving}}))
    failed = {r.device: r.warm_error for r in model.replicas if r.warm_error}
    freeze_startup_objects(full_collection=False)       # the later buckets' graphs too, no pause while serving
    log.info(json.dumps({'event': 'warm', 'process_seconds': process_seconds(), 'after_ready_seconds':
                         round(time.perf_counter() - started, 3), 'startup': [startup_report(model)],
                         **({'failed': failed} if failed else {})}))


def freeze_startup_objects(full_collection):
    """Take what start-up made (modules, compiled graphs, the models' Python objects: 400,000-750,000 objects with a
    compiled model) out of the garbage collector's scans. A full collection visits every tracked object, and ran for
    0.43-0.5 s with the whole server stalled (H100, 2026-12-07: every request in flight waited that long, twice in 8 s
    of load; 0.2-0.67 s on a 2-core CPU); frozen, they are never visited again. Garbage is collected first, so that no
    reference cycle is frozen for good (one through a failed warm-up's traceback could hold GPU memory): in full once,
    before ready; only the young generations after the later buckets, while requests are being served."""
    gc.collect(2 if full_collection else 1)
    gc.freeze()


async def keep_replicas_healthy(state, every_s=5.0):
    """Probe failed replicas in the background too, so a device whose batch failed once rejoins even when nothing
    polls /readyz (requests avoid it while it is unhealthy)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await probe_unhealthy(state, timeout=every_s, only_replicated=True)
        except Exception as e:          # never let the loop die; the next round tries again
            log.warning(json.dumps({'event': 'probe_failed', 'error': f'{type(e).__name__}: {e}'[:300]}))


async def first_bucket(replica):
    """A later replica's warmup_to_serve on its backend thread. Cancelled meanwhile (the server stops), the warm-up
    cannot be interrupted: the staged rest it returns is stopped when it does (helpers killed, lock released)."""
    future = asyncio.ensure_future(replica.batcher.on_backend_thread(replica.backend.warmup_to_serve))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        def stop_it(f):
            if not f.cancelled() and f.exception() is None and f.result() is not None:
                f.result().stop()
        future.add_done_callback(stop_it)
        raise


async def warm_stages(replica, staged):
    """A replica's staged compile warm-up after its first bucket (None: nothing staged); helpers stopped on failure."""
    if staged is None:
        return
    try:
        for bucket in staged.here:
            await replica.batcher.on_backend_thread(replica.backend.warm_buckets, [bucket])
        await asyncio.to_thread(staged.wait)
        for bucket in staged.from_helpers:
            await replica.batcher.on_backend_thread(replica.backend.warm_buckets, [bucket])
        await replica.batcher.on_backend_thread(replica.backend.finish_warmup, staged)
    except BaseException:
        staged.stop()
        raise


async def probe_unhealthy(state, timeout, only_replicated=False):
    """One small generation on every serving replica whose last batch failed, all at once; a success brings it back.
    only_replicated: just models with several replicas (a lone replica gets the requests anyway, and recovers on them)."""
    async def probe(model, replica):
        embedding = await model.prompts.embed('a photo') if model.kind == 'text' else None
        inputs, _, _ = model.build_inputs(1, seed=0, prompt='a photo' if model.kind == 'text' else None,
                                          text_embedding=embedding)
        await replica.batcher.probe(inputs, timeout=timeout)
    await asyncio.gather(*(probe(m, r) for m in state.models.values()
                           if len(m.replicas) > 1 or not only_replicated for r in m.serving if not r.batcher.healthy),
                         return_exceptions=True)
