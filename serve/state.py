"""What the app holds while it runs (typed), and the lifespan that loads and warms the models into it."""

import asyncio
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from serve.conditions import quoted
from serve.errors import ApiError, log
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
            state.ready = True
            log.info(json.dumps({'event': 'ready', 'process_seconds': process_seconds(),
                                 'models': [m.info() for m in loaded], 'startup': [startup_report(m) for m in loaded]}))
            yield
        finally:
            state.ready = False
            for task in later:
                task.cancel()
            await asyncio.gather(*later, return_exceptions=True)
            for m in loaded:
                for replica in m.replicas:
                    await replica.batcher.stop()
    return lifespan


async def warm_the_rest(model, staged):
    """After ready: the first replica's other compile buckets (staged), then every other replica, each joining the
    model's serving replicas once warm. A bucket warms on its replica's backend thread between batches (a batch
    waits for at most one bucket's warm-up), the helpers' ones once they are done. Replicas warm one after another:
    on one compile they share the cache's warming lock. Logs an event 'warm' at the end; a failure is logged
    ('warm_failed') and leaves the model serving where it is warm already."""
    started = time.perf_counter()
    replica = model.replicas[0]
    try:
        await warm_stages(replica, staged)
        for replica in model.replicas[1:]:
            staged = await replica.batcher.on_backend_thread(replica.backend.warmup_to_serve)
            model.serve_on(replica)
            await warm_stages(replica, staged)
    except BaseException as e:
        if not isinstance(e, asyncio.CancelledError):
            log.error(json.dumps({'event': 'warm_failed', 'model': model.id, 'device': replica.device,
                                  'error': f'{type(e).__name__}: {e}'[:500],
                                  'serving_on': {r.device: list(getattr(r.backend, 'usable', [])) for r in model.serving}}))
            return
        raise
    log.info(json.dumps({'event': 'warm', 'process_seconds': process_seconds(), 'after_ready_seconds':
                         round(time.perf_counter() - started, 3), 'startup': [startup_report(model)]}))


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
