"""Slow and many clients against a real uvicorn `sida serve`: the connection limits it is started with hold."""

import socket
import time

import httpx
import pytest

from bench.slow_clients import open_slow_sockets, run
from tests.serve.conftest import Server


def test_hundreds_of_stalled_sockets_do_not_stop_normal_requests(server):
    """300 sockets with half-sent headers (bench/slow_clients.py runs 1,000: docs/serving.md has the numbers)."""
    result = run(server.url, sockets=300, requests=5, hold_s=1.0)
    assert result['still_open'] == 300, result            # uvicorn has no header-read timeout: they are all held...
    assert result['healthz']['codes'] == [200] and result['generate']['codes'] == [200], result
    assert result['healthz']['max_ms'] < 2000 and result['generate']['max_ms'] < 5000, result   # ...and cost nothing


def test_connection_limits_reach_uvicorn(class_bundle_dir, tmp_path):
    env = {'SIDA_LIMIT_CONCURRENCY': '40', 'SIDA_TIMEOUT_KEEP_ALIVE_S': '1', 'SIDA_H11_MAX_INCOMPLETE_EVENT_SIZE': '4096'}
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--no-warmup', env=env, tmp_path=tmp_path)
    try:
        held = open_slow_sockets('127.0.0.1', s.port, 50)               # over the limit of 40 connections
        time.sleep(0.5)
        assert httpx.get(f'{s.url}/healthz', timeout=10).status_code == 503      # refused, not queued behind them
        for sock in held:
            sock.close()
        time.sleep(0.5)
        assert httpx.get(f'{s.url}/healthz', timeout=10).status_code == 200

        with socket.create_connection(('127.0.0.1', s.port), timeout=10) as sock:   # unfinished headers over 4 KiB: refused
            sock.sendall(b'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 8192)
            assert sock.recv(100).startswith(b'HTTP/1.1 400')

        with socket.create_connection(('127.0.0.1', s.port), timeout=10) as sock:      # an idle keep-alive is closed
            sock.sendall(b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
            answer = b''
            while not answer.endswith(b'{"status":"ok"}'):
                answer += sock.recv(1000)
            assert answer.startswith(b'HTTP/1.1 200')
            started = time.monotonic()
            assert sock.recv(1000) == b''
            assert 0.5 < time.monotonic() - started < 5
    finally:
        s.stop()


def test_http_parser_is_h11_unless_chosen(monkeypatch):
    from serve.cli import connection_limits
    from serve.settings import Settings
    assert connection_limits(Settings())['http'] == 'h11'
    monkeypatch.setenv('SIDA_HTTP_PARSER', 'httptools')
    assert connection_limits(Settings())['http'] == 'httptools'
    monkeypatch.setenv('SIDA_HTTP_PARSER', 'fast')
    with pytest.raises(ValueError, match='h11'):
        Settings()
