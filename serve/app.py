"""The FastAPI app: wires the state and lifespan (serve.state), middleware, error handlers and routers together,
and mounts the web page that an installed `sida.pages` entry point offers (the ui room; serve never imports it)."""

import json
from importlib.metadata import entry_points

from fastapi import FastAPI

import sida
from serve.errors import ERROR_RESPONSES, add_error_handlers, log
from serve.load_shedding import ShedWhenLate
from serve.metrics import Metrics
from serve.middleware import BodyLimit, RequestContext
from serve.rate_limit import RateLimiter
from serve.routers import generate, health, metrics, models, openai
from serve.settings import Settings
from serve.state import AppState, lifespan_for

ROUTERS = (health.router, metrics.router, models.router, generate.router, openai.router)   # in /docs order
PAGES = 'sida.pages'      # entry points: name -> mount(app, path), served at /<name>


def create_app(settings: Settings, models=None, devices=None):
    """models: ServedModel objects built already (the CLI, tests); otherwise built from settings.bundles at start-up,
    one replica per entry of devices ([(name in metrics, device)], serve/devices.py)."""
    state = AppState(settings, Metrics(), settings.keys(), RateLimiter(settings.rate_limit_per_minute))
    app = FastAPI(title='sida', version=sida.__version__, lifespan=lifespan_for(state, models, devices), responses=ERROR_RESPONSES,
                  description='One-step image generation (SiD / SiDA distilled generators).')
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(ShedWhenLate, state=state)           # inside the request context (id, log line), before the body
    app.add_middleware(RequestContext, metrics=state.metrics)
    add_error_handlers(app, state.metrics)
    for router in ROUTERS:
        app.include_router(router)
    app.state.sida = state
    app.state.ui = settings.ui and mount_pages(app)
    return app


def mount_pages(app):
    """Mount each installed page (the Gradio demo: `ui = ui.mount:mount_in_process`); True if any was mounted.
    A page that cannot load (gradio is not installed) is left out, said in one log line: the [serve] extra alone
    still serves the API."""
    mounted, unloadable = False, []
    for page in entry_points(group=PAGES):
        try:
            mount = page.load()
        except ImportError as e:
            unloadable.append(f'/{page.name}: {e}')
            continue
        mount(app, path=f'/{page.name}')
        mounted = True
    if not mounted:
        reason = '; '.join(unloadable) or f'no {PAGES} entry point is installed'
        log.warning(json.dumps({'event': 'ui_disabled', 'reason': f'{reason} (pip install sida[ui])'}))
    return mounted
