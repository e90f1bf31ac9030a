"""`sida ui`: the Gradio demo on its own, against a running sida API (`sida serve` also serves it at /ui)."""

import os

import click

from sida.cli_options import CTX


@click.command(context_settings=CTX)
@click.option('--api', 'api_url', required=True, help='URL of the sida API, e.g. http://127.0.0.1:8000 (a `sida serve`).')
@click.option('--api-key', default=None, envvar='SIDA_API_KEY', help='Bearer key for the API, if it asks for one.')
@click.option('--host', default='127.0.0.1', help='Bind address of the page.')
@click.option('--port', type=int, default=7860, help='Port of the page.')
def ui(api_url, api_key, host, port):
    """Run the web demo (model picker, live mode, seed walk, side-by-side) against the API at --api."""
    os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')     # offline machines: no phoning home
    import httpx
    import uvicorn

    from ui.mount import standalone_app
    try:    # say so now if the API is not there, rather than on the first click
        httpx.get(f'{api_url.rstrip("/")}/healthz', timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        click.echo(f'warning: the sida API at {api_url} does not answer /healthz ({e}); the page will say so until it does', err=True)
    click.echo(f'sida ui on http://{host}:{port}/ui against {api_url}', err=True)
    uvicorn.run(standalone_app(api_url, api_key), host=host, port=port, log_level='warning')
