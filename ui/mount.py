"""Putting the page on a server: into sida's own FastAPI app (in-process API calls), or standalone against a URL."""

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from ui.client import SidaApi
from ui.page import CSS, build_page


def mount_in_process(app, path='/ui'):
    """Mount the page at `path` of `app`; the page calls that same app's API through ASGI, not a socket."""
    gr.mount_gradio_app(app, build_page(SidaApi.in_process(app)), path=path, css=CSS, footer_links=['api', 'gradio'],
                        show_error=False)
    return app


def standalone_app(api_url, api_key=None, path='/ui'):
    """A small FastAPI app that only serves the page (at `path`, with / redirecting there), calling the API at `api_url`."""
    app = FastAPI(title='sida ui', docs_url=None, redoc_url=None, openapi_url=None)

    @app.get('/', include_in_schema=False)
    async def home():
        return RedirectResponse(path)
    gr.mount_gradio_app(app, build_page(SidaApi(api_url, api_key=api_key)), path=path, css=CSS, footer_links=['api', 'gradio'],
                        show_error=False)
    return app
