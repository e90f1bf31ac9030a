"""Serving one model on several devices: the device list, the workers' shares and slots, and the app with two
replicas (two CPU "devices", each its own real torch backend and batcher) routing by the time each would finish."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serve.devices import DeviceError, WorkerSlot, pinned, resolve_devices, worker_share
from tests.bench.conftest import make_bundle
from tests.serve.conftest import Server, in_process
from tests.serve.test_deadlines import Slowed

ROOT = Path(__file__).resolve().parents[2]


def test_device_lists_are_checked_against_this_machine():
    assert resolve_devices([]) == [] and resolve_devices(['cpu', ' cpu:1 ']) == ['cpu', 'cpu:1']
    with pytest.raises(DeviceError, match='no CUDA GPU'):
        resolve_devices(['all'])
    with pytest.raises(DeviceError, match=r"'cuda:3' is not on this machine \(no CUDA GPU\)"):
        resolve_devices(['cuda:3'])
    with pytest.raises(DeviceError, match="unknown device 'gpu0'"):
        resolve_devices(['gpu0'])
    with pytest.raises(DeviceError, match='cpu or cuda'):
        resolve_devices(['meta'])


def test_workers_are_dealt_the_devices():
    gpus = [f'cuda:{i}' for i in range(8)]
    assert [worker_share(gpus, 8, k) for k in range(8)] == [[g] for g in gpus]          # a process per GPU
    assert worker_share(gpus, 2, 1) == ['cuda:1', 'cuda:3', 'cuda:5', 'cuda:7']
    assert [worker_share(gpus[:2], 4, k) for k in range(4)] == [['cuda:0'], ['cuda:1'], ['cuda:0'], ['cuda:1']]
    assert worker_share([], 4, 3) == []


def test_a_worker_sees_only_its_gpus(monkeypatch):
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    assert pinned(['cuda:3', 'cuda:5']) == ('3,5', ['cuda:0', 'cuda:1'])
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '4,5,6,7')          # the parent's own restriction carries through
    assert pinned(['cuda:1']) == ('5', ['cuda:0'])
    assert pinned(['cpu:0', 'cpu:1']) == (None, ['cpu:0', 'cpu:1'])
    assert pinned(['cuda:0', 'cuda:0']) == (None, ['cuda:0', 'cuda:0'])    # one GPU twice: nothing to pin


def test_worker_slots_are_exclusive_and_free_again_when_a_worker_dies(tmp_path):
    a, b = WorkerSlot(tmp_path, 2), WorkerSlot(tmp_path, 2)
    assert (a.index, b.index) == (0, 1)
    with pytest.raises(RuntimeError, match='all 2 worker slots'):
        WorkerSlot(tmp_path, 2)
    a.release()
    assert WorkerSlot(tmp_path, 2).index == 0
    # A process that holds slot 0 and dies (no release): its lock goes with it.
    code = f'from serve.devices import WorkerSlot; import os; s = WorkerSlot({str(tmp_path)!r}, 3); os._exit(s.index)'
    slots = tmp_path / 'other'
    slots.mkdir()
    assert subprocess.run([sys.executable, '-c', code.replace(str(tmp_path), str(slots))], cwd=ROOT).returncode == 0
    assert WorkerSlot(slots, 3).index == 0


@pytest.fixture(scope='module')
def tiny_bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp('replicas') / 'tiny')


def wait_for(condition, seconds=60):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, 'timed out'
        time.sleep(0.02)


def metric(text, name, **labels):
    """The value of one labelled sample in Prometheus text, 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + '{') and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    return 0.0


def test_requests_go_to_the_replica_that_would_finish_first(tiny_bundle_dir):
    """Two replicas: a request goes to whichever would finish it first (the idle one while the other is busy); one
    that fails leaves the model serving on the other, readiness says which, and it rejoins once a probe succeeds."""
    with in_process(tiny_bundle_dir, max_batch=4, replicas=[('cpu:0', 'cpu:0'), ('cpu:1', 'cpu:1')]) as api:
        model = next(iter(api.app.state.sida.models.values()))
        wait_for(lambda: len(model.serving) == 2)                 # the second joins once warm, after ready
        first, second = model.replicas
        first.batcher.backend = slow = Slowed(first.batcher.backend, 0.3)
        second.batcher.backend = quick = Slowed(second.batcher.backend, 0.0)
        assert api.get('/v1/models').json()['data'][0]['devices'] == ['cpu:0', 'cpu:1']

        busy = threading.Thread(target=lambda: api.post('/v1/generate', json={'seed': 0, 'n': 4}))
        busy.start()                                              # both idle: the first replica takes it (1.2 s)
        wait_for(lambda: first.batcher.running_images == 4, 10)
        for seed in (1, 2):                                       # meanwhile the idle one takes the others
            assert api.post('/v1/generate', json={'seed': seed, 'n': 4}).status_code == 200
        busy.join()
        assert (slow.calls, quick.calls) == (1, 2)
        text = api.get('/metrics').text
        assert metric(text, 'sida_images_total', device='cpu:0') == 4
        assert metric(text, 'sida_images_total', device='cpu:1') == 8

        quick.fail_next = True            # a fault on the second replica fails its request and takes it out...
        assert api.post('/v1/generate', json={'seed': 3}).status_code == 503
        assert not second.batcher.healthy and model.healthy
        before = slow.calls
        assert api.post('/v1/generate', json={'seed': 4}).status_code == 200
        assert slow.calls == before + 1   # ...so the next request goes to the first, though it is slower
        ready = api.get('/readyz')       # the model stays ready; the probe brings the second back
        assert ready.status_code == 200, ready.text
        assert ready.json()['models'][model.id]['replicas'] == {'cpu:0': {'serving': True, 'healthy': True},
                                                                'cpu:1': {'serving': True, 'healthy': True}}


def test_workers_take_their_own_share_of_the_devices(tmp_path, tiny_bundle_dir):
    """--workers 2 --devices cpu:0,cpu:1: each worker process claims a slot and serves on its own device (its ready
    line says which), and the images of both add up in /metrics."""
    s = Server('--bundle', tiny_bundle_dir, '--backend', 'torch', '--workers', 2, '--devices', 'cpu:0,cpu:1',
               tmp_path=tmp_path)
    try:
        wait_for(lambda: sum('"event": "ready"' in line for line in Path(s.log.name).read_text().splitlines()) == 2)
        lines = Path(s.log.name).read_text().splitlines()
        ready = [json.loads(line[line.index('{'):]) for line in lines if '"event": "ready"' in line]
        assert sorted(e['models'][0]['devices'][0] for e in ready) == ['cpu:0', 'cpu:1']
    finally:
        s.stop()


def test_a_device_this_machine_lacks_is_one_line(tmp_path, tiny_bundle_dir):
    result = subprocess.run([sys.executable, '-m', 'sida.cli', 'serve', '--bundle', str(tiny_bundle_dir), '--devices',
                             'cuda:1', '--port', '0'], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: device 'cuda:1' is not on this machine (no CUDA GPU)"
