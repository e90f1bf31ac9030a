"""Putting the page on a server: into sida's own FastAPI app (in-process API calls), or standalone against a URL."""

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.middleware.cors import CORSMiddleware

from ui.client import SidaApi
from ui.page import CSS, build_page


def same_origin_only(app):
    """Gradio's own CORS layer reflects any Origin, with credentials, once the host is not localhost: any web site
    could drive the page's endpoints from a visitor's browser. The page needs no cross-origin access (it is served
    by the app it calls), so the app gets Starlette's CORS middleware with no allowed origin, which Gradio defers to."""
    app.add_middleware(CORSMiddleware, allow_origins=[])


def mount_in_process(app, path='/ui'):
    """Mount the page at `path` of `app`; the page calls that same app's API through ASGI, not a socket."""
    same_origin_only(app)
    gr.mount_gradio_app(app, build_page(SidaApi.in_process(app)), path=path, css=CSS, footer_links=['api', 'gradio'],
                        show_error=False)
    return app


def standalone_app(api_url, api_key=None, path='/ui'):
    """A small FastAPI app that only serves the page (at `path`, with / redirecting there), calling the API at `api_url`."""
    app = FastAPI(title='sida ui', docs_url=None, redoc_url=None, openapi_url=None)

    @app.get('/', include_in_schema=False)
    async def home():
        return RedirectResponse(path)
    same_origin_only(app)
    gr.mount_gradio_app(app, build_page(SidaApi(api_url, api_key=api_key)), path=path, css=CSS, footer_links=['api', 'gradio'],
                        show_error=False)
    return app
