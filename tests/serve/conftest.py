import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

SIDA = str(Path(sys.executable).parent / 'sida')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_until_answers(process, url, what, timeout):
    """Poll url until it answers 200; fail early if the process dies, kill it on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'{what} exited with {process.returncode}')
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f'{what} did not answer in {timeout} s')


class Server:
    """`sida serve` as a real uvicorn subprocess on a free loopback port: for what only a real server shows
    (the socket, disconnects, the process's memory and its shutdown, other processes as clients)."""

    def __init__(self, *args, env=None, tmp_path=None):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.log = open(tmp_path / f'server-{self.port}.log', 'wb') if tmp_path else subprocess.DEVNULL
        self.process = subprocess.Popen([SIDA, 'serve', '--port', str(self.port), *map(str, args)], stdout=self.log,
                                        stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        wait_until_answers(self.process, f'{self.url}/readyz', 'sida serve', 120)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@contextmanager
def in_process(*bundles, replicas=None, **settings):
    """The real app (its lifespan run: models loaded, warmed, batchers started) behind a TestClient, with no socket.
    Requests from several threads at once are served concurrently, on the app's one event loop. replicas: [(name,
    device)], one replica of each model per entry. Loop-lag shedding is off unless asked for: a burst of threads on a
    2-core CI machine runs the loop late, and a test of the batcher's admission must see the batcher's answer
    (tests/serve/test_load_shedding.py turns it on)."""
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings
    settings = {'backend': 'torch', 'ui': False, 'max_loop_lag_ms': 0, **settings}
    with TestClient(create_app(Settings(bundles=[str(b) for b in bundles], **settings), devices=replicas)) as client:
        yield client


@pytest.fixture(scope='session')
def class_bundle_dir(tmp_path_factory):
    from models.demo import make_demo_bundle
    path = tmp_path_factory.mktemp('serve') / 'demo'
    make_demo_bundle(path)
    return path


@pytest.fixture(scope='session')
def server(class_bundle_dir, tmp_path_factory):
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--max-n', '8', tmp_path=tmp_path_factory.mktemp('logs'))
    yield s
    s.stop()


class Triton:
    """A real tritonserver (the one in the nvidia-pytriton wheel) serving the demo bundle through its python backend."""

    def __init__(self, bundle_dir, tmp):
        from export.triton_repo import write_triton_repo
        write_triton_repo(bundle_dir, tmp / 'repo', 'python', name='demo-untrained-ddpmpp', kind='KIND_CPU')
        self.tmp, self.ports = tmp, (free_port(), free_port(), free_port())
        self.url = f'http://127.0.0.1:{self.ports[0]}'
        self.start()

    def start(self):
        from export import tritonserver
        self.process = tritonserver.start(self.tmp / 'repo', self.tmp / 'ws', *self.ports, log_path=self.tmp / 'triton.log')
        tritonserver.wait_ready(self.ports[0], self.process, timeout=180)

    def stop(self):
        """Gone at once, as in a crash: SIGKILL to its process group (the server and its python-backend stubs)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture(scope='session')
def triton(class_bundle_dir, tmp_path_factory):
    """One Triton for the session (it takes long to start); a test that stops it starts it again."""
    pytest.importorskip('pytriton', reason='nvidia-pytriton (which ships tritonserver) is not installed')
    t = Triton(class_bundle_dir, tmp_path_factory.mktemp('triton'))
    yield t
    t.stop()
