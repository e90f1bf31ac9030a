"""Safe defaults: no open server on a reachable address by accident, and no cross-origin access to the page."""

import pytest
from click.testing import CliRunner

from serve.cli import is_loopback, serve
from tests.serve.conftest import in_process


@pytest.mark.parametrize('host', ['0.0.0.0', '10.1.2.3', '::', 'example.org'])
def test_a_reachable_host_without_keys_is_refused_in_one_line(host):
    result = CliRunner().invoke(serve, ['--host', host, '--no-ui', '--no-warmup'])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert f'refusing to serve on {host} without API keys' in line and '--allow-unauthenticated' in line
    assert 'SIDA_ALLOW_UNAUTHENTICATED=1' in line


def test_the_environment_sets_the_host_too(monkeypatch):
    monkeypatch.setenv('SIDA_HOST', '0.0.0.0')
    assert CliRunner().invoke(serve, ['--no-ui']).exit_code == 2


@pytest.mark.parametrize('host,loopback', [('127.0.0.1', True), ('::1', True), ('localhost', True), ('127.0.0.2', True),
                                           ('0.0.0.0', False), ('192.168.1.5', False), ('my-host', False)])
def test_loopback_needs_no_keys(host, loopback):
    assert is_loopback(host) is loopback


def test_the_page_allows_no_other_origin(class_bundle_dir):
    pytest.importorskip('gradio', reason='the [ui] extra is not installed')
    with in_process(class_bundle_dir, ui=True, warmup=False) as c:
        evil = {'Origin': 'https://evil.example'}
        r = c.get('/ui/config', headers=evil)
        assert r.status_code == 200 and 'access-control-allow-origin' not in r.headers     # Gradio alone reflected it
        r = c.options('/ui/config', headers={**evil, 'Access-Control-Request-Method': 'POST'})
        assert 'access-control-allow-origin' not in r.headers


@pytest.mark.parametrize('opt_in', [{'allow_unauthenticated': True}, {'api_keys': ['k']}])
def test_keys_or_the_explicit_opt_in_serve_a_reachable_host(opt_in, monkeypatch):
    from serve.cli import refuse_open_server
    from serve.settings import Settings
    refuse_open_server(Settings(host='0.0.0.0', **opt_in))
    monkeypatch.setenv('SIDA_ALLOW_UNAUTHENTICATED', '1')
    refuse_open_server(Settings(host='0.0.0.0'))


def test_a_request_timeout_shorter_than_the_deadline_cap_is_refused_in_one_line(monkeypatch):
    """The timeout is a backstop for a hung backend: under the deadline cap it would cut admitted requests short."""
    monkeypatch.setenv('SIDA_REQUEST_TIMEOUT_S', '5')
    result = CliRunner().invoke(serve, ['--no-ui', '--no-warmup'])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line == ('Error: bad settings: request_timeout_s (5 s) is shorter than max_deadline_ms (60000 ms): requests '
                    'would time out before their deadline; raise it or lower max_deadline_ms')
