"""`sida serve`: the HTTP API and the Gradio demo (/ui) on one or more bundles."""

import faulthandler
import io
import logging
import os
import sys
from pathlib import Path

import click

from serve.runtimes import BACKEND_HELP, backend_callback
from serve.worker import SWITCH_INTERVAL_S
from sida.cli_options import COMPILE_MODES, CPU_COMPILE_DEFAULT, CTX, CUDA_COMPILE_DEFAULT, is_loopback

ZOO = Path(__file__).resolve().parents[1] / 'models' / 'zoo'
DEMO = Path.home() / '.cache' / 'sida' / 'demo-untrained-ddpmpp'


def default_bundles(log):
    """The bundled zoo's one-step generators (not its teacher); until it ships, a tiny untrained demo model built on
    first start (said out loud)."""
    from models.bundle import is_teacher, read_config
    zoo = sorted(p for p in ZOO.glob('*') if (p / 'sida.json').is_file()) if ZOO.is_dir() else []
    zoo = [p for p in zoo if not is_teacher(read_config(p))]
    if zoo:
        return [str(p) for p in zoo]
    if not (DEMO / 'sida.json').is_file():
        from models.demo import make_demo_bundle
        make_demo_bundle(DEMO)
    log(f'no zoo models are installed yet: serving the small UNTRAINED demo bundle {DEMO} (its images are noise)')
    return [str(DEMO)]


def refuse_open_server(settings):
    """Anyone who can reach a non-loopback address could use an unauthenticated server: that takes keys or an
    explicit opt-in, never a default."""
    if not is_loopback(settings.host) and not settings.keys() and not settings.allow_unauthenticated:
        click.echo(f'Error: refusing to serve on {settings.host} without API keys: give --api-key/--api-keys-file, '
                   'or --allow-unauthenticated (SIDA_ALLOW_UNAUTHENTICATED=1) to serve it open', err=True)
        raise SystemExit(2)


def connection_limits(settings):
    """What uvicorn/h11 offer against slow or many clients. uvicorn has no header-read timeout: a client that sends
    half a request line holds its socket until it leaves (only a cheap idle socket on the event loop); the reverse
    proxy of a deployment (deploy/nginx.conf) bounds header and body reads. h11 by default: only h11 bounds the
    size of unfinished headers; httptools parses faster behind such a proxy."""
    return {'http': settings.http_parser, 'timeout_keep_alive': settings.timeout_keep_alive_s,
            'limit_concurrency': settings.limit_concurrency,
            'backlog': settings.backlog, 'h11_max_incomplete_event_size': settings.h11_max_incomplete_event_size}


def setting(name):
    """The settings' own default, shown by click (the option itself defaults to None: unset flags leave env/file alone)."""
    from serve.settings import Settings
    default = Settings.model_fields[name].default
    return ', '.join(map(str, default)) if isinstance(default, list) else str(default)


@click.command(context_settings=CTX)
@click.option('--bundle', 'bundles', multiple=True, type=click.Path(exists=True, file_okay=False), show_default='the zoo',
              help='Bundle to serve (repeat for several; the first is the default).')
@click.option('--backend', default=None, callback=backend_callback, show_default=setting('backend'), help=BACKEND_HELP)
@click.option('--triton-url', default=None, help='External Triton server for --backend triton.')
@click.option('--compile-mode', type=click.Choice(COMPILE_MODES),
              default=None,
              show_default=f"the bundle's `sida export compile`, else {CUDA_COMPILE_DEFAULT} on CUDA, {CPU_COMPILE_DEFAULT} on CPU",
              help='torch.compile mode of the compile backend (reduce-overhead: CUDA graphs without kernel tuning).')
@click.option('--host', default=None, show_default=setting('host'), help='Bind address.')
@click.option('--port', type=int, default=None, show_default=setting('port'), help='HTTP port.')
@click.option('--max-batch', type=int, default=None, show_default=setting('max_batch'), help='Images per backend call.')
@click.option('--max-delay-ms', type=float, default=None, show_default=setting('max_delay_ms'),
              help='Batching window, milliseconds (0: batch what queued while the GPU was busy, never wait).')
@click.option('--max-queue-images', type=int, default=None, show_default=setting('max_queue_images'), help='Queue bound before 429.')
@click.option('--max-loop-lag-ms', type=click.FloatRange(0), default=None, show_default=setting('max_loop_lag_ms'),
              help='Refuse generation requests (429) while the event loop runs this late: keeps an overloaded process '
                   'fast for what it admits (0: never).')
@click.option('--max-n', type=int, default=None, show_default=setting('max_n'), help='Images per request.')
@click.option('--api-key', 'api_keys', multiple=True, help='Require this Bearer key (repeatable).')
@click.option('--api-keys-file', default=None, type=click.Path(dir_okay=False), help='File with one API key per line.')
@click.option('--allow-unauthenticated', is_flag=True, default=None,
              help='Serve a non-loopback --host without API keys (refused otherwise).')
@click.option('--rate-limit', 'rate_limit_per_minute', type=int, default=None, show_default=setting('rate_limit_per_minute'),
              help='Requests per minute per key (0 = off).')
@click.option('--config', 'config_file', type=click.Path(exists=True, dir_okay=False), default=None,
              help='Settings file (TOML, YAML or JSON); SIDA_* environment variables work too.')
@click.option('--no-warmup', is_flag=True, help='Skip the warm-up generation at start.')
@click.option('--ui/--no-ui', 'with_ui', default=None, show_default='on', help='Serve the Gradio demo at /ui.')
@click.option('--triton', 'with_triton', is_flag=True,
              help='Run the backends inside a real Triton Inference Server (PyTriton) and serve the API through it.')
@click.option('--triton-http-port', type=int, default=8010, help='Triton KServe v2 HTTP port (with --triton).')
@click.option('--triton-grpc-port', type=int, default=8011, help='Triton gRPC port (with --triton).')
@click.option('--triton-metrics-port', type=int, default=8002, help='Triton metrics port (with --triton).')
@click.option('--workers', type=click.IntRange(1), default=None, show_default=setting('workers'),
              help='Server processes on the one port, each with its own copy of the models and batcher: for small models '
                   'whose request rate one Python process cannot keep up with; with --devices, the devices are dealt '
                   'out to them (docs/serving.md).')
@click.option('--devices', default=None, show_default='one replica where the backend chooses',
              help='Serve every model on these devices, one replica each: cuda:0,cuda:1,... or all (every GPU). A '
                   'request goes to the replica that would finish it first; with --triton they are the Triton model\'s '
                   'instances. For small models give --workers too (e.g. --workers 8 --devices all: a process per GPU).')
def serve(bundles, backend, triton_url, compile_mode, host, port, max_batch, max_delay_ms, max_queue_images, max_loop_lag_ms, max_n,
          api_keys, api_keys_file, allow_unauthenticated, rate_limit_per_minute, config_file, no_warmup, with_ui, with_triton,
          triton_http_port, triton_grpc_port, triton_metrics_port, workers, devices):
    """Serve bundles over HTTP: /v1/generate, /v1/images/generations, /v1/models, /healthz, /readyz, /metrics, /docs,
    and the web demo at /ui."""
    import uvicorn
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from serve.app import create_app
    from serve.settings import load_settings
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    # A crash in native code (CUDA, a compiled kernel, a library's teardown) prints every thread's Python stack to
    # stderr instead of a bare "Segmentation fault" (--workers processes: serve_workers).
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, RuntimeError, io.UnsupportedOperation):   # no stderr file (a test runner, 2>&-)
        pass
    try:
        settings = load_settings(config_file, bundles=list(bundles) or None, backend=backend, triton_url=triton_url,
                                 compile_mode=compile_mode, host=host,
                                 port=port, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue_images=max_queue_images,
                                 max_loop_lag_ms=max_loop_lag_ms, max_n=max_n, api_keys=list(api_keys) or None,
                                 api_keys_file=api_keys_file,
                                 allow_unauthenticated=allow_unauthenticated,
                                 rate_limit_per_minute=rate_limit_per_minute, warmup=False if no_warmup else None,
                                 ui=with_ui, workers=workers,
                                 devices=devices.split(',') if devices is not None else None)
    except SettingsError as e:          # an SIDA_* variable that does not parse
        raise click.ClickException(f'bad setting: {e}') from None
    except ValidationError as e:
        first = e.errors()[0]
        where = '.'.join(map(str, first['loc']))        # empty for a rule across settings: its message names them
        raise click.ClickException(f'bad setting {where}: {first["msg"]}' if where else
                                   f'bad settings: {first["msg"].removeprefix("Value error, ")}') from None
    refuse_open_server(settings)
    from serve.devices import DeviceError, resolve_devices
    try:
        settings.devices = resolve_devices(settings.devices)
    except DeviceError as e:
        raise click.ClickException(str(e)) from None
    if not settings.bundles:
        settings.bundles = default_bundles(lambda m: click.echo(m, err=True))
    check_distinct_ids(settings.bundles)
    check_port_free(settings.host, settings.port)         # before minutes of loading and warming, not after
    if settings.workers > 1:
        if with_triton:
            raise click.UsageError('--workers and --triton do not go together: Triton runs the models in its own process')
        return serve_workers(settings)
    from models.bundle import BundleError
    from serve.backends import BackendUnavailable
    from serve.served_model import ServedModel
    app_models, triton = [], None
    app = None
    replicas = [(d, d) for d in settings.devices] or None
    try:   # load before the server starts, so a bad bundle or backend is one line, not a traceback
        if with_triton:
            from serve.pytriton_server import start_triton
            local = [ServedModel(bundle, settings, devices=replicas) for bundle in settings.bundles]
            triton = start_triton(local, triton_http_port, triton_grpc_port, triton_metrics_port, settings.max_batch,
                                  settings.max_delay_ms)
            settings.backend, settings.triton_url = 'triton', f'http://127.0.0.1:{triton_http_port}'
            replicas = None          # the app's backend is Triton's client: Triton spreads over the devices
            click.echo(f'Triton (PyTriton) on http://127.0.0.1:{triton_http_port} (gRPC :{triton_grpc_port}, '
                       f'metrics :{triton_metrics_port})', err=True)
        for bundle in settings.bundles:
            app_models.append(ServedModel(bundle, settings, on_batch=lambda *a: app.state.sida.metrics.on_batch(*a),
                                          devices=replicas))
    except (BundleError, BackendUnavailable, FileNotFoundError, RuntimeError) as e:
        if triton is not None:
            triton.stop()
        raise click.ClickException(str(e)) from None
    app = create_app(settings, models=app_models)
    pages = '/docs, demo at /ui' if app.state.ui else '/docs'
    click.echo(f'sida serving {", ".join(settings.bundles)} on http://{settings.host}:{settings.port} (docs at {pages})', err=True)
    # The event loop and the backend thread share the GIL. At the default 5 ms switch interval, a busy loop holds the
    # backend thread off for up to 5 ms each time it wants the GIL back (after every CUDA sync): batches took 24 ms for
    # 5 ms of GPU work (py-spy on the H200, 2026-12-04). A shorter interval hands it back sooner.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level='warning', **connection_limits(settings))
    finally:
        if triton is not None:
            triton.stop()


def check_port_free(host, port):
    """Bind each address once, as asyncio's server will (SO_REUSEADDR, IPv6 sockets IPv6-only): a port in use is one
    line now rather than after the models warm up."""
    import socket
    where = f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                   flags=socket.AI_PASSIVE):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)        # TIME_WAIT is no clash
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
    except OSError as e:
        raise click.ClickException(f'cannot listen on {where}: {e.strerror or e}; stop what uses it or give '
                                   'another --port') from None


def check_distinct_ids(bundles):
    """A model's id is its bundle's name: two bundles with one name would leave one unreachable, so refuse them."""
    from models.bundle import BundleError, read_config
    seen = {}
    for bundle in bundles:
        try:
            name = read_config(bundle).name
        except BundleError as e:
            raise click.ClickException(str(e)) from None
        if name in seen:
            same = Path(seen[name]).resolve() == Path(bundle).resolve()
            raise click.UsageError(f'{bundle} is given twice' if same else
                                   f'two bundles are named {name!r} ({seen[name]}, {bundle}): models are served by name, '
                                   'so one would be unreachable; rename one (the "name" in its sida.json)')
        seen[name] = bundle


def serve_workers(settings):
    """uvicorn's supervisor with `settings.workers` processes, each building the app from the settings (serve.worker)."""
    import tempfile

    import uvicorn

    from models.bundle import BundleError, load_bundle, require_one_step
    from serve.worker import SETTINGS_ENV, SLOTS_ENV
    for bundle in settings.bundles:      # a bad bundle is one line here, not N tracebacks from the workers
        try:
            require_one_step(load_bundle(bundle).config, bundle)
        except (BundleError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    os.environ.setdefault('PYTHONFAULTHANDLER', '1')        # each worker: faulthandler on, as in one process
    with tempfile.TemporaryDirectory(prefix='sida-metrics-') as metrics_dir:
        os.environ['PROMETHEUS_MULTIPROC_DIR'] = metrics_dir          # read by prometheus_client as each worker imports it
        os.environ[SLOTS_ENV] = metrics_dir                            # the workers' slot locks (serve/devices.py)
        where = f' dealt {len(settings.devices)} devices' if settings.devices else ''
        click.echo(f'sida serving {", ".join(settings.bundles)} on http://{settings.host}:{settings.port} with '
                   f'{settings.workers} worker processes{where} (each takes connections once its models are ready)', err=True)
        uvicorn.run('serve.worker:app', factory=True, workers=settings.workers, host=settings.host, port=settings.port,
                    log_level='warning', **connection_limits(settings))
