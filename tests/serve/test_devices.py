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
    with pytest.raises(DeviceError, match='cpu:1 listed twice'):
        resolve_devices(['cpu:1', 'cpu:0', 'cpu:1'])


def test_sida_devices_takes_the_cli_spelling_or_json(monkeypatch):
    from serve.settings import Settings
    monkeypatch.setenv('SIDA_DEVICES', 'cuda:0,cuda:1')
    assert Settings().devices == ['cuda:0', 'cuda:1']
    monkeypatch.setenv('SIDA_DEVICES', '["all"]')
    assert Settings().devices == ['all']


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


def test_a_worker_pins_its_share_before_cuda_starts(tmp_path):
    """serve.worker.app in a fresh process (as uvicorn starts it): it takes the free slot, sets CUDA_VISIBLE_DEVICES to
    its GPUs and builds the app with their physical names and the names it will see them by."""
    from serve.settings import Settings
    held = WorkerSlot(tmp_path, 2)                    # slot 0 taken by a live worker: this one gets slot 1
    settings = Settings(bundles=['x'], workers=2, devices=['cuda:0', 'cuda:1', 'cuda:2', 'cuda:3']).model_dump_json()
    code = ('import json, os, serve.app\n'
            'serve.app.create_app = lambda settings, devices=None: print(json.dumps([os.environ["CUDA_VISIBLE_DEVICES"], '
            'devices]))\n'
            'import serve.worker\n'
            'serve.worker.app()\n')
    env = {**os.environ, 'SIDA_WORKER_SETTINGS': settings, 'SIDA_WORKER_SLOTS': str(tmp_path), 'CUDA_VISIBLE_DEVICES': '4,5,6,7'}
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    visible, devices = json.loads(out.stdout.strip().splitlines()[-1])
    assert visible == '5,7' and devices == [['cuda:1', 'cuda:0'], ['cuda:3', 'cuda:1']]
    held.release()


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


def test_an_idle_replica_comes_before_a_busy_faster_one(tiny_bundle_dir):
    """A rate measured on small batches says little about the next one: an idle replica gets the request even if a
    busy one's average rate promises to finish it sooner."""
    from serve.served_model import ServedModel
    from serve.settings import Settings
    model = ServedModel(tiny_bundle_dir, Settings(backend='torch'), devices=[('cpu:0', 'cpu:0'), ('cpu:1', 'cpu:1')])
    busy, idle = model.replicas
    model.serving = [busy, idle]
    busy.batcher.running_images, busy.batcher.drain.images_per_s = 64, 2000.0      # 64 in 32 ms: 16 more "by 40 ms"
    idle.batcher.drain.images_per_s = 300.0                                      # once 1 image in 3.3 ms: 16 "in 53 ms"
    assert model.replica_for(16) is idle
    idle.batcher.queued_images = 16                                              # both busy: the estimate decides
    assert model.replica_for(16) is busy


def test_a_replica_that_fails_to_warm_leaves_the_others_serving(tiny_bundle_dir, caplog):
    """Three replicas, the second's warm-up fails: the third still warms and serves, /readyz says why the second is
    out, and the 'warm' event names the failure."""
    import logging

    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.served_model import ServedModel
    from serve.settings import Settings
    settings = Settings(bundles=[str(tiny_bundle_dir)], backend='torch', ui=False)
    model = ServedModel(tiny_bundle_dir, settings, devices=[(f'cpu:{i}', f'cpu:{i}') for i in range(3)])

    def broken():
        raise RuntimeError('CUDA error: out of memory (injected)')
    model.replicas[1].backend.warmup_to_serve = broken
    with caplog.at_level(logging.INFO, logger='sida'), TestClient(create_app(settings, models=[model])) as api:
        wait_for(lambda: any('"event": "warm"' in r.getMessage() for r in caplog.records))
        assert [r.device for r in model.serving] == ['cpu:0', 'cpu:2']
        replicas = api.get('/readyz').json()['models'][model.id]['replicas']
        assert replicas['cpu:1'] == {'serving': False, 'healthy': True, 'warm_error': 'RuntimeError: CUDA error: out of memory (injected)'}
        assert replicas['cpu:2'] == {'serving': True, 'healthy': True}
        warm = next(json.loads(r.getMessage()) for r in caplog.records if '"event": "warm"' in r.getMessage())
        assert set(warm['failed']) == {'cpu:1'}
        assert all(api.post('/v1/generate', json={'seed': s}).status_code == 200 for s in range(4))


def test_more_compiled_replicas_get_room_for_their_graphs():
    """Dynamo's per-function graph limit grows with what the process compiles (3 GPUs x 3 buckets > the default 8)."""
    import torch._dynamo.config as dynamo

    from serve.backends import make_room_for_graphs
    before = dynamo.recompile_limit
    for _ in range(3):
        make_room_for_graphs(3)
    assert dynamo.recompile_limit >= max(before, 9) and dynamo.accumulated_recompile_limit >= 18


def test_the_graph_limit_is_raised_under_its_name_before_torch_2_7():
    """torch 2.6 (the Docker image's default NGC base) calls the limits cache_size_limit; it has no recompile_limit."""
    from types import SimpleNamespace

    from export.compile_cache import raise_recompile_limit
    old = SimpleNamespace(cache_size_limit=8, accumulated_cache_size_limit=256)
    raise_recompile_limit(32, old)
    assert vars(old) == {'cache_size_limit': 32, 'accumulated_cache_size_limit': 256}
    raise_recompile_limit(200, old)
    assert vars(old) == {'cache_size_limit': 200, 'accumulated_cache_size_limit': 400}


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
