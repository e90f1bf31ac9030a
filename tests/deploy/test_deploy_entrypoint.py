"""The image's ENTRYPOINT and HEALTHCHECK commands, exactly as the Dockerfile gives them, run outside Docker
against this checkout's `sida`; and the compose file's model-repository job on CPU (onnxruntime runtime)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import ROOT, in_checkout, parse_dockerfile
from tests.serve.conftest import free_port

BIN = str(Path(sys.executable).parent)        # this environment's `sida` and `python` come first on PATH


def image_command(stage):
    """ENTRYPOINT + CMD and the HEALTHCHECK command of a runtime stage, with /opt/sida paths mapped to this checkout."""
    def local(args):
        return [str(in_checkout(a)) if a.startswith('/opt/sida/') else a for a in args]
    entrypoint, cmd, check = stage.last('ENTRYPOINT').value, stage.last('CMD').value, stage.last('HEALTHCHECK').value
    return local(list(entrypoint) + list(cmd)), local(list(check[1:]))


def image_env(stage, **overrides):
    """The stage's ENV (image paths and HOME left out: they only exist in the image), then the overrides."""
    env = {k: v for k, v in stage.env().items() if k not in ('PATH', 'HOME')}
    return {**os.environ, **env, 'PATH': f'{BIN}:{os.environ["PATH"]}', **overrides}


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    from models.demo import make_demo_bundle
    path = tmp_path_factory.mktemp('deploy') / 'demo'
    make_demo_bundle(path)
    return path


def test_entrypoint_serves_until_ready_then_exits_cleanly_on_sigterm(bundle, tmp_path):
    stage = parse_dockerfile().stages['cpu']
    command, healthcheck = image_command(stage)
    port = free_port()
    config = tmp_path / 'sida.yaml'
    config.write_text('max_n: 3\n')                         # reaches sida only through SIDA_CONFIG -> --config
    # Loopback and a free port instead of the image's 0.0.0.0:8000; the UI (which has its own tests) off, to start fast.
    env = image_env(stage, SIDA_HOST='127.0.0.1', SIDA_PORT=str(port), SIDA_BUNDLES=f'["{bundle}"]', SIDA_BACKEND='torch',
                    SIDA_CONFIG=str(config), SIDA_UI='false', HOME=str(tmp_path))
    log = open(tmp_path / 'server.log', 'wb')
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        # Ready when the image's own HEALTHCHECK command says so.
        deadline = time.monotonic() + 90
        while subprocess.run(healthcheck, env=env, capture_output=True).returncode != 0:
            assert process.poll() is None, (tmp_path / 'server.log').read_text()
            assert time.monotonic() < deadline, 'not ready in 90 s: ' + (tmp_path / 'server.log').read_text()
            time.sleep(0.3)
        url = f'http://127.0.0.1:{port}'
        assert httpx.get(f'{url}/readyz').json()['ready'] is True
        # The shell exec'd: the process the container runtime signals is sida itself.
        cmdline = Path(f'/proc/{process.pid}/cmdline').read_bytes().split(b'\0')
        assert any(part.endswith(b'sida') for part in cmdline) and b'serve' in cmdline, cmdline
        # SIDA_CONFIG reached sida serve as --config.
        refused = httpx.post(f'{url}/v1/generate', json={'n': 4, 'seed': 0})
        assert refused.status_code == 400 and 'limit of 3' in refused.json()['error']['message']
        assert httpx.post(f'{url}/v1/generate', json={'n': 1, 'seed': 0}).status_code == 200

        # `docker stop` sends SIGTERM: a request in flight (here: its body half sent) is still answered, then sida exits.
        body = b'{"n": 1, "seed": 7}'
        with socket.create_connection(('127.0.0.1', port), timeout=30) as client:
            client.sendall(b'POST /v1/generate HTTP/1.1\r\nHost: sida\r\nContent-Type: application/json\r\n'
                           b'Content-Length: %d\r\n\r\n' % len(body) + body[:5])
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert process.poll() is None, 'exited with a request in flight'
            client.sendall(body[5:])
            response = b''
            while chunk := client.recv(65536):
                response += chunk
        assert response.startswith(b'HTTP/1.1 200') and b'"seed":7' in response, response[:300]
        # Uvicorn drains, then re-raises the SIGTERM it caught, so the exit status is the signal's (Docker shows 143).
        assert process.wait(timeout=30) in (0, -signal.SIGTERM), (tmp_path / 'server.log').read_text()
        assert 'Traceback' not in (tmp_path / 'server.log').read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    assert subprocess.run(healthcheck, env=env, capture_output=True).returncode == 1, 'unhealthy once stopped'


def test_entrypoint_passes_sida_subcommands_and_other_commands_through(tmp_path):
    command, _ = image_command(parse_dockerfile().stages['cuda'])
    env = image_env(parse_dockerfile().stages['cuda'], HOME=str(tmp_path))

    def run(*args, **extra):
        return subprocess.run([*command, *args], env={**env, **extra}, capture_output=True, text=True, timeout=60)
    serve_help = run('--help')                              # options only: `sida serve --help`
    assert serve_help.returncode == 0 and '--triton-url' in serve_help.stdout
    export_help = run('export', '--help')                   # a sida subcommand: `sida export --help`
    assert export_help.returncode == 0 and 'triton-repo' in export_help.stdout
    assert run('sida', '--version').stdout.startswith('sida')
    assert run('echo', 'as', 'given').stdout == 'as given\n'
    bad = run('--help', SIDA_TRITON='maybe')
    assert bad.returncode == 2 and 'SIDA_TRITON' in bad.stderr


@pytest.mark.slow          # an ONNX export behind the parity gate: 20-35 s on 2 cores
def test_model_repository_job_makes_a_triton_repository_on_cpu(tmp_path):
    """What compose's model-repository service runs, with TRITON_RUNTIME=onnxruntime (TensorRT needs the image)."""
    env = {**os.environ, 'PATH': f'{BIN}:{os.environ["PATH"]}'}
    script = str(ROOT / 'deploy' / 'model-repository.sh')
    bundle, repo = tmp_path / 'bundles' / 'demo-untrained-ddpmpp', tmp_path / 'model-repository'
    done = subprocess.run([script, str(bundle), str(repo), 'onnxruntime'], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    model = repo / 'demo-untrained-ddpmpp'
    assert (model / '1' / 'model.onnx').is_file()
    from export.triton_repo import parse_config
    config = parse_config((model / 'config.pbtxt').read_text())
    assert config.name == 'demo-untrained-ddpmpp' and config.backend == 'onnxruntime'

    missing = subprocess.run([script, str(tmp_path / 'bundles' / 'other'), str(repo)], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and 'no bundle' in missing.stderr
    wrong = subprocess.run([script, str(bundle), str(repo), 'tflite'], env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and 'RUNTIME' in wrong.stderr
