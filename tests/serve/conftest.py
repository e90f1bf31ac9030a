import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SIDA = str(Path(sys.executable).parent / 'sida')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    """`sida serve` as a real uvicorn subprocess on a free loopback port."""

    def __init__(self, *args, env=None, tmp_path=None):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.log = open(tmp_path / f'server-{self.port}.log', 'wb') if tmp_path else subprocess.DEVNULL
        self.process = subprocess.Popen([SIDA, 'serve', '--port', str(self.port), *map(str, args)], stdout=self.log,
                                        stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f'sida serve exited with {self.process.returncode}')
            try:
                if httpx.get(f'{self.url}/readyz', timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            self.stop()
            raise RuntimeError('sida serve did not become ready in 120 s')
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope='module')
def class_bundle_dir(tmp_path_factory):
    from models.demo import make_demo_bundle
    path = tmp_path_factory.mktemp('serve') / 'demo'
    make_demo_bundle(path)
    return path


@pytest.fixture(scope='module')
def server(class_bundle_dir, tmp_path_factory):
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--max-n', '8', tmp_path=tmp_path_factory.mktemp('logs'))
    yield s
    s.stop()
