"""One seed, the same image through every backend available on CPU: torch, onnxruntime, Triton."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import Server, free_port, in_process


def image_for(client, seed):
    r = client.post('/v1/generate', json={'class_name': 'dog', 'seed': seed, 'n': 2})
    assert r.status_code == 200, r.text
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(i['b64'])))).astype(int) for i in r.json()['images']]


def test_same_seed_same_image_on_torch_onnxruntime_and_triton(class_bundle_dir, triton):
    from export.onnx_export import export_onnx
    export_onnx(class_bundle_dir, log=lambda m: None)
    images = {}
    for backend in ('torch', 'onnxruntime', 'triton'):
        with in_process(class_bundle_dir, backend=backend, triton_url=triton.url, warmup=False) as api:
            assert api.get('/v1/models').json()['data'][0]['backend'] == backend
            images[backend] = image_for(api, 123)
    for backend in ('onnxruntime', 'triton'):
        for a, b in zip(images['torch'], images[backend]):
            assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize('backend,fragment,code', [('triton', 'needs --triton-url', 1), ('tensorrt', 'no fp16 TensorRT engine', 1),
                                                   ('warp-drive', 'unknown backend', 2)])     # a misspelt name is a usage error
def test_unavailable_backend_fails_at_start_with_the_reason(class_bundle_dir, backend, fragment, code):
    from click.testing import CliRunner

    from sida.cli import main
    r = CliRunner().invoke(main, ['serve', '--bundle', str(class_bundle_dir), '--backend', backend, '--port', str(free_port())])
    assert r.exit_code == code and fragment in r.stderr and 'Traceback' not in r.output, r.output


def test_two_bundles_with_one_name_are_refused_before_anything_loads(class_bundle_dir, tmp_path):
    """Models are served by name: a second bundle of the same name would be unreachable, so it is a usage error."""
    import shutil

    from click.testing import CliRunner

    from sida.cli import main
    twin = shutil.copytree(class_bundle_dir, tmp_path / 'twin')
    for second, fragment in ((twin, 'two bundles are named'), (class_bundle_dir, 'is given twice')):
        r = CliRunner().invoke(main, ['serve', '--bundle', str(class_bundle_dir), '--bundle', str(second),
                                      '--port', str(free_port())])
        assert r.exit_code == 2 and fragment in r.stderr and 'Traceback' not in r.output, r.output


def test_a_port_in_use_is_one_line_before_any_model_loads(class_bundle_dir, monkeypatch):
    import socket

    from click.testing import CliRunner

    import serve.served_model
    from sida.cli import main

    def never(*a, **k):
        raise AssertionError('a model was loaded for a port that cannot be had')
    monkeypatch.setattr(serve.served_model, 'ServedModel', never)
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        r = CliRunner().invoke(main, ['serve', '--bundle', str(class_bundle_dir), '--port', str(taken.getsockname()[1])])
    assert r.exit_code == 1 and 'cannot listen on 127.0.0.1:' in r.stderr and 'another --port' in r.stderr, r.output


def test_serve_with_pytriton(class_bundle_dir, tmp_path):
    """`sida serve --triton`: Triton (PyTriton) runs the backend; the API and plain tritonclient both reach it."""
    pytest.importorskip('pytriton', reason='nvidia-pytriton is not installed')
    import tritonclient.http as httpclient
    ports = [free_port() for _ in range(3)]
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--triton', '--triton-http-port', ports[0],
               '--triton-grpc-port', ports[1], '--triton-metrics-port', ports[2], tmp_path=tmp_path)
    try:
        assert s.client.get('/v1/models').json()['data'][0]['backend'] == 'triton'
        via_api = image_for(s.client, 7)
        client = httpclient.InferenceServerClient(f'127.0.0.1:{ports[0]}')
        assert client.is_model_ready('demo-untrained-ddpmpp')
        from models.seeds import noise_for_seeds
        noise = noise_for_seeds([7, 8], (3, 32, 32)).numpy()
        labels = np.array([[5], [5]], dtype=np.int64)                # "dog"
        inputs = [httpclient.InferInput('noise', list(noise.shape), 'FP32'), httpclient.InferInput('class_labels', [2, 1], 'INT64')]
        inputs[0].set_data_from_numpy(noise)
        inputs[1].set_data_from_numpy(labels)
        direct = client.infer('demo-untrained-ddpmpp', inputs).as_numpy('images').astype(int)
        for a, b in zip(via_api, direct):
            assert np.abs(a - b).max() <= 1
        inputs[1].set_data_from_numpy(np.array([[5], [99]], dtype=np.int64))      # not an unconditional image: an error
        with pytest.raises(Exception, match='out of range 0..9'):
            client.infer('demo-untrained-ddpmpp', inputs)
    finally:
        s.stop()


def test_compile_mode_setting_reaches_the_compile_backend(class_bundle_dir):
    """--compile-mode / SIDA_COMPILE_MODE picks torch.compile's mode (compiling itself happens at the first call)."""
    from click.testing import CliRunner

    from models.bundle import load_bundle
    from serve.backends import make_backend
    from sida.cli import main
    bundle = load_bundle(class_bundle_dir, return_float=True)
    assert make_backend('compile', bundle, device='cpu', compile_mode='reduce-overhead').mode == 'reduce-overhead'
    assert make_backend('compile', bundle, device='cpu').mode == 'default'
    r = CliRunner().invoke(main, ['serve', '--bundle', str(class_bundle_dir), '--compile-mode', 'fast'])
    assert r.exit_code == 2 and "'fast' is not one of" in r.output


def test_compile_backend_takes_the_exported_options_and_says_why_their_code_does_not_fit(class_bundle_dir, tmp_path):
    """Without --compile-mode the compile backend compiles what `sida export compile` chose; artifacts made for another
    setup (here another torch) are not loaded, and the log names the difference. Nothing compiles here: that is lazy."""
    import shutil

    from export.compile_cache import cache_key
    from export.compiled import CompileOptions
    from export.manifest import record_export
    from models.bundle import load_bundle
    from serve.backends import CompiledBackend
    bundle_dir = shutil.copytree(class_bundle_dir, tmp_path / 'bundle')
    bundle = load_bundle(bundle_dir)
    chosen = CompileOptions('reduce-overhead', freezing=True)
    key = cache_key(bundle.config, 'cpu', 'fp32', chosen)
    record_export(bundle_dir, 'torch_compile-fp32', {
        'runtime': 'torch.compile', 'bundle_sha256': bundle.config.sha256, 'parity': {'passed': True}, 'buckets': [1, 8, 64],
        'options': chosen.as_dict(), 'cache': {'file': 'exports/torch_compile/x.bin', 'key': {**key, 'torch': '0.0'}}})
    logs = []
    backend = CompiledBackend(bundle, 'cpu', log=logs.append)
    assert backend.options == chosen and backend.describe()['compile_options'] == 'reduce-overhead+freezing'
    assert "exported for another setup (torch: exported '0.0'" in logs[0], logs
    backend = CompiledBackend(bundle, 'cpu', mode='default', log=logs.append)        # --compile-mode: the mode only
    assert str(backend.options) == 'default+freezing' and "options: exported" in logs[1], logs
    assert backend.buckets == (1, 8, 64)                                             # the default max batch, 64
    assert CompiledBackend(bundle, 'cpu', max_batch=32, log=logs.append).buckets == (1, 8, 32)


def test_compile_buckets_follow_the_max_batch():
    from export.compiled import batch_buckets
    assert batch_buckets(1) == (1,) and batch_buckets(8) == (1, 8) and batch_buckets(32) == (1, 8, 32)
    assert batch_buckets(128) == (1, 8, 64, 128) and batch_buckets(256) == (1, 8, 64, 256)


def test_warm_up_times_each_batch_size_over_its_calls(class_bundle_dir):
    """Warm-up runs each batch size warmup_calls times (the compile backend on CUDA: twice, so that its CUDA graphs
    are recorded before the first request) and reports the seconds of each."""
    from models.bundle import load_bundle
    from serve.backends import TorchBackend

    class Counting(TorchBackend):
        def generate(self, inputs):
            calls.append(len(inputs['noise']))
            return super().generate(inputs)
    calls = []
    backend = Counting(load_bundle(class_bundle_dir), 'cpu')
    backend.warmup_calls = 2
    backend.warmup((1, 3))
    assert calls == [1, 1, 3, 3] and set(backend.describe()['warmup_batches']) == {1, 3} and backend.warm


def _eager_compile(monkeypatch, tmp_path):
    """torch.compile stubbed to the eager module: the staging is tested here, compiling in tests/export."""
    import export.compiled
    monkeypatch.setattr(export.compiled.torch, 'compile', lambda module, **kw: module)
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR', raising=False)
    monkeypatch.setenv('SIDA_CACHE_DIR', str(tmp_path / 'machine'))


def test_a_staged_warm_up_serves_from_the_first_bucket_and_uses_each_bucket_once_warm(class_bundle_dir, tmp_path, monkeypatch):
    from models.bundle import load_bundle
    from models.seeds import example_inputs
    from serve.backends import CompiledBackend
    _eager_compile(monkeypatch, tmp_path)
    backend = CompiledBackend(load_bundle(class_bundle_dir), 'cpu', log=lambda m: None)
    shapes = []
    generator = backend.generator
    backend.generator = lambda **kw: shapes.append(len(kw['noise'])) or generator(**kw)
    staged = backend.warmup_to_serve()
    assert backend.usable == (1,) and staged.here == [8, 64] and staged.from_helpers == []     # a CPU: no helpers
    shapes.clear()
    assert backend.generate(example_inputs(backend.config, 5)).shape[0] == 5
    assert shapes == [1] * 5                                  # only bucket 1 is warm: five calls of one
    backend.warm_buckets([8])
    shapes.clear()
    backend.generate(example_inputs(backend.config, 5))
    assert shapes == [8] and backend.usable == (1, 8) and set(backend.warmup_batches) == {1, 8}
    staged.stop()


def test_the_server_is_ready_after_the_first_bucket_and_logs_when_every_bucket_is_warm(class_bundle_dir, tmp_path,
                                                                                         monkeypatch, caplog):
    import gc
    import json
    import time
    _eager_compile(monkeypatch, tmp_path)
    gc.unfreeze()
    with caplog.at_level('INFO', logger='sida.serve'), in_process(class_bundle_dir, backend='compile') as c:
        frozen = gc.get_freeze_count()          # start-up's objects are out of the collector's scans (no stalls)
        assert frozen > 10_000
        events = lambda: [json.loads(r.message) for r in caplog.records if r.message.startswith('{"event"')]  # noqa: E731
        ready = next(e for e in events() if e['event'] == 'ready')
        assert set(ready['startup'][0]['warmup_batches']) == {'1'}                   # JSON keys
        assert c.post('/v1/generate', json={'class_name': 'dog', 'seed': 1, 'n': 3}).status_code == 200
        deadline = time.monotonic() + 60
        while not any(e['event'] == 'warm' for e in events()) and time.monotonic() < deadline:
            time.sleep(0.1)
        warm = next(e for e in events() if e['event'] == 'warm')
        assert set(warm['startup'][0]['warmup_batches']) == {'1', '8', '32'}          # max batch 32
        assert warm['after_ready_seconds'] > 0 and warm['process_seconds'] >= ready['process_seconds']
        assert gc.get_freeze_count() > frozen   # and the later buckets' graphs
    assert gc.get_freeze_count() == 0           # unfrozen at shutdown: the process's exit collects them as usual
    assert (tmp_path / 'machine' / 'compile' / 'sida-warm').is_dir()
