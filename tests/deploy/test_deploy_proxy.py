"""deploy/nginx.conf, read with NGINX's own parser (crossplane): the slow-client timeouts, the connection limit,
buffering, and a proxy read timeout above the API's longest deadline; wired to the api service in compose.yaml."""

import json
import os
import re
import shutil
import subprocess
import time

import httpx
import pytest

from serve.settings import Settings
from tests.deploy.conftest import ROOT, resolve, tool
from tests.deploy.test_deploy_compose import COMPOSE_VARIABLES, SERVE_PORT, container_ports, volume_targets

CONF = ROOT / 'deploy' / 'nginx.conf'
UNITS = {'ms': 0.001, 's': 1, 'm': 60, 'h': 3600, '': 1}
SIZES = {'k': 1024, 'm': 1024 ** 2, '': 1}


def seconds(value):
    number, unit = re.fullmatch(r'(\d+)(ms|s|m|h|)', value).groups()
    return int(number) * UNITS[unit]


def size(value):
    number, unit = re.fullmatch(r'(\d+)([km]?)', value.lower()).groups()
    return int(number) * SIZES[unit]


@pytest.fixture(scope='module')
def nginx():
    crossplane = pytest.importorskip('crossplane', reason='crossplane comes with the dev extra')
    parsed = crossplane.parse(str(CONF), combine=True)
    assert parsed['status'] == 'ok', parsed['errors']
    return parsed['config'][0]['parsed']


def block(directives, name, *args):
    found = [d for d in directives if d['directive'] == name and (not args or tuple(d['args']) == args)]
    assert len(found) == 1, (name, args, found)
    return found[0].get('block', found[0]['args'])


def value(directives, name):
    return block(directives, name)[0]


def test_slow_clients_are_cut_off_within_seconds(nginx):
    http = block(nginx, 'http')
    assert seconds(value(http, 'client_header_timeout')) <= 10       # what uvicorn lacks: a header-read timeout
    assert seconds(value(http, 'client_body_timeout')) <= 10
    assert seconds(value(http, 'send_timeout')) <= 60
    assert seconds(value(http, 'keepalive_timeout')) <= 30
    assert size(value(http, 'client_max_body_size')) == Settings.model_fields['max_body_bytes'].default


def test_connections_per_client_are_limited_with_a_declared_zone(nginx):
    http = block(nginx, 'http')
    zone_arg = block(http, 'limit_conn_zone')[1]
    zone = zone_arg.removeprefix('zone=').split(':')[0]
    name, limit = block(http, 'limit_conn')
    assert name == zone and 0 < int(limit) <= 256
    assert value(http, 'limit_conn_status') == '429'                   # the API's own status for "too much"
    assert int(value(block(nginx, 'events'), 'worker_connections')) >= 1024


def test_the_api_is_proxied_buffered_with_a_read_timeout_above_the_longest_deadline(nginx):
    http = block(nginx, 'http')
    upstream = block(http, 'upstream', 'sida_api')
    assert value(upstream, 'server') == f'api:{SERVE_PORT}'
    server = block(http, 'server')
    api = block(server, 'location', '/')
    assert value(api, 'proxy_pass') == 'http://sida_api'
    assert value(api, 'proxy_buffering') == 'on' and value(api, 'proxy_request_buffering') == 'on'
    longest = Settings.model_fields['max_deadline_ms'].default / 1000
    assert seconds(value(api, 'proxy_read_timeout')) > longest
    ui = block(server, 'location', '/ui')                             # server-sent events must not be buffered
    assert value(ui, 'proxy_buffering') == 'off' and seconds(value(ui, 'proxy_read_timeout')) > longest


def test_compose_runs_the_proxy_on_the_published_port(compose, nginx):
    proxy = compose['services']['proxy']
    assert volume_targets(proxy)['/etc/nginx/nginx.conf'] == './nginx.conf'
    listen = int(value(block(block(nginx, 'http'), 'server'), 'listen'))
    assert container_ports(proxy) == [listen]
    assert proxy['depends_on']['api']['condition'] == 'service_healthy'
    api_ports = [resolve(str(p), {}) for p in compose['services']['api']['ports']]
    assert all(p.startswith('127.0.0.1:') for p in api_ports), 'the API itself is reachable only from the host'

    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    result = subprocess.run([tool('docker-compose'), '-f', str(ROOT / 'deploy' / 'compose.yaml'), 'config', '--format', 'json'],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)['services']['proxy']
    assert resolved['ports'][0]['target'] == listen and resolved['ports'][0]['published'] == '8000'


def test_nginx_accepts_the_file(tmp_path):
    """`nginx -t` where an nginx binary is installed (the upstream host `api` exists only in compose: use loopback)."""
    binary = shutil.which('nginx')
    if binary is None:
        pytest.skip('no nginx binary here (crossplane parsed the file above)')
    conf = tmp_path / 'nginx.conf'
    conf.write_text(CONF.read_text().replace(f'server api:{SERVE_PORT};', f'server 127.0.0.1:{SERVE_PORT};'))
    result = subprocess.run([binary, '-t', '-c', str(conf), '-p', str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nginx_cuts_off_stalled_clients_that_uvicorn_would_keep(tmp_path):
    """The real nginx with this file in front of a real `sida serve`: stalled sockets are closed after
    client_header_timeout, and requests through the proxy are served."""
    binary = shutil.which('nginx')
    if binary is None:
        pytest.skip('no nginx binary here')
    from bench.slow_clients import open_slow_sockets, still_open
    from models.demo import make_demo_bundle
    from tests.serve.conftest import Server, free_port, wait_until_answers
    make_demo_bundle(tmp_path / 'demo')
    api = Server('--bundle', tmp_path / 'demo', '--backend', 'torch', '--no-warmup', tmp_path=tmp_path)
    port = free_port()
    conf = tmp_path / 'nginx.conf'
    conf.write_text(CONF.read_text().replace(f'server api:{SERVE_PORT};', f'server 127.0.0.1:{api.port};')
                    .replace('listen 8080;', f'listen 127.0.0.1:{port};').replace('pid /tmp/nginx.pid;', f'pid {tmp_path}/nginx.pid;')
                    .replace('client_header_timeout 10s;', 'client_header_timeout 2s;'))
    proxy = subprocess.Popen([binary, '-c', str(conf), '-p', str(tmp_path), '-g', 'daemon off;'],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / 'nginx.err', 'wb'))
    try:
        wait_until_answers(proxy, f'http://127.0.0.1:{port}/readyz', 'nginx', 30)
        held = open_slow_sockets('127.0.0.1', port, 50)
        time.sleep(4)                                       # past the (shortened) client_header_timeout
        assert still_open(held) == 0
        r = httpx.post(f'http://127.0.0.1:{port}/v1/generate', json={'seed': 1}, timeout=30)
        assert r.status_code == 200 and r.json()['images']
    finally:
        proxy.terminate()
        proxy.wait(10)
        api.stop()
