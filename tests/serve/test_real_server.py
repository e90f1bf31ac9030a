"""What only a real uvicorn server shows: bodies streamed over the socket and a client that hangs up.
(Draining on SIGTERM is tested on the image's entrypoint, in tests/deploy.)"""

import json
import resource
import signal
import socket
import time
from pathlib import Path

from tests.serve.conftest import Server


def test_a_streamed_body_over_the_limit_is_refused_while_reading(server):
    def chunks():                      # no Content-Length (chunked): the limit is enforced while reading
        yield b'{"prompt": "'
        for _ in range(100):
            yield b'x' * 2000
        yield b'"}'
    r = server.client.post('/v1/generate', content=chunks(), headers={'content-type': 'application/json'})
    assert r.status_code == 413 and r.json()['error']['code'] == 'payload_too_large'
    assert server.client.post('/v1/generate', json={'seed': 3}).status_code == 200       # still serving


def test_client_disconnect_cancels_the_work(class_bundle_dir, tmp_path):
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--max-delay-ms', '3000', '--no-warmup', tmp_path=tmp_path)
    try:
        body = json.dumps({'seed': 1}).encode()
        with socket.create_connection(('127.0.0.1', s.port)) as sock:      # a client that gives up after 0.5 s
            sock.sendall(b'POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                         + f'Content-Length: {len(body)}\r\n\r\n'.encode() + body)
            time.sleep(0.5)
        time.sleep(4)
        text = s.client.get('/metrics').text
        assert 'sida_errors_total{code="client_disconnected"} 1.0' in text
        assert 'sida_images_total{' not in text           # the abandoned image was never generated
        assert s.client.post('/v1/generate', json={'seed': 2}).status_code == 200
    finally:
        s.stop()


def worker_pids(parent):
    """uvicorn's worker processes under the supervisor (multiprocessing spawn children)."""
    children = Path(f'/proc/{parent}/task/{parent}/children').read_text().split()
    return [int(c) for c in children if b'spawn_main' in Path(f'/proc/{c}/cmdline').read_bytes()]


def test_workers_share_one_port_and_add_up_their_metrics(class_bundle_dir, tmp_path):
    """--workers 2: two processes behind one port, each with its own model; every request is answered, /metrics counts
    the images of both, and stopping the server stops them too."""
    import concurrent.futures

    import httpx
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--workers', 2, tmp_path=tmp_path)
    try:
        workers = worker_pids(s.process.pid)
        assert len(workers) == 2, workers

        def images_total():
            lines = httpx.get(f'{s.url}/metrics', timeout=30).text.splitlines()
            return sum(float(line.split()[-1]) for line in lines if line.startswith('sida_images_total{'))
        before = images_total()

        def one(seed):      # a fresh connection each: the kernel hands connections to either worker
            return httpx.post(f'{s.url}/v1/generate', json={'seed': seed, 'n': 2}, timeout=60).status_code
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(24))) == {200}
        assert images_total() - before == 48
    finally:
        s.stop()
    for pid in workers:
        assert not Path(f'/proc/{pid}').exists() or b'zombie' in Path(f'/proc/{pid}/status').read_bytes().lower()


def test_the_ready_line_says_where_the_start_went(server):
    """The log's ready event: seconds since the process started, and per model its load and its warm-up per batch."""
    lines = Path(server.log.name).read_text().splitlines()
    ready = next(json.loads(line[line.index('{'):]) for line in lines if '"event": "ready"' in line)
    model = ready['startup'][0]
    assert model['id'] == ready['models'][0]['id'] and set(model['warmup_batches']) == {'1'}
    assert 0 < model['load_seconds'] and 0 < model['warmup_batches']['1'] <= model['warmup_seconds']
    assert ready['process_seconds'] > model['load_seconds'] + model['warmup_seconds']


def test_a_native_crash_leaves_the_python_stacks_in_the_log(class_bundle_dir, tmp_path):
    """A segmentation fault (here a signal standing in for one in CUDA or a kernel) prints every thread's Python stack
    to the server's log, not only the shell's bare "Segmentation fault"."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))          # the server inherits it: no core file from the crash
    try:
        s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--no-warmup', tmp_path=tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    try:
        s.process.send_signal(signal.SIGSEGV)
        assert s.process.wait(20) == -signal.SIGSEGV
    finally:
        s.stop()
        s.log.close()
    log = Path(s.log.name).read_text()
    assert 'Fatal Python error: Segmentation fault' in log and 'File "' in log and 'uvicorn' in log, log[-2000:]
