"""One seed, the same image through every backend available on CPU: torch, onnxruntime, Triton."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import Server, free_port


def image_for(server, seed):
    r = server.client.post('/v1/generate', json={'class_name': 'dog', 'seed': seed, 'n': 2})
    assert r.status_code == 200, r.text
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(i['b64'])))).astype(int) for i in r.json()['images']]


def test_same_seed_same_image_on_torch_onnxruntime_and_triton(class_bundle_dir, tmp_path):
    pytest.importorskip('pytriton', reason='nvidia-pytriton (which ships tritonserver) is not installed')
    from export import tritonserver
    from export.onnx_export import export_onnx
    from export.triton_repo import write_triton_repo
    export_onnx(class_bundle_dir, log=lambda m: None)
    # The tritonserver in the nvidia-pytriton wheel carries only the python backend: serve sida's generator through it.
    write_triton_repo(class_bundle_dir, tmp_path / 'repo', 'python', name='demo-untrained-ddpmpp', kind='KIND_CPU')
    http = free_port()
    triton = tritonserver.start(tmp_path / 'repo', tmp_path / 'ws', http, free_port(), free_port(), log_path=tmp_path / 'triton.log')
    servers = []
    try:
        tritonserver.wait_ready(http, triton, timeout=180)
        for backend, extra in (('torch', ()), ('onnxruntime', ()), ('triton', ('--triton-url', f'http://127.0.0.1:{http}'))):
            servers.append(Server('--bundle', class_bundle_dir, '--backend', backend, *extra, tmp_path=tmp_path))
            assert servers[-1].client.get('/v1/models').json()['data'][0]['backend'] == backend
        reference = image_for(servers[0], 123)
        for s in servers[1:]:
            for a, b in zip(reference, image_for(s, 123)):
                assert np.abs(a - b).max() <= 1
    finally:
        for s in servers:
            s.stop()
        tritonserver.stop(triton)


@pytest.mark.parametrize('backend,fragment,code', [('triton', 'needs --triton-url', 1), ('tensorrt', 'no fp16 TensorRT engine', 1),
                                                   ('warp-drive', 'unknown backend', 2)])     # a misspelt name is a usage error
def test_unavailable_backend_fails_at_start_with_the_reason(class_bundle_dir, backend, fragment, code):
    import subprocess

    from tests.serve.conftest import SIDA
    r = subprocess.run([SIDA, 'serve', '--bundle', str(class_bundle_dir), '--backend', backend, '--port', str(free_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code and fragment in r.stderr and 'Traceback' not in r.stderr


def test_serve_with_pytriton(class_bundle_dir, tmp_path):
    """`sida serve --triton`: Triton (PyTriton) runs the backend; the API and plain tritonclient both reach it."""
    pytest.importorskip('pytriton', reason='nvidia-pytriton is not installed')
    import tritonclient.http as httpclient
    ports = [free_port() for _ in range(3)]
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--triton', '--triton-http-port', ports[0],
               '--triton-grpc-port', ports[1], '--triton-metrics-port', ports[2], tmp_path=tmp_path)
    try:
        assert s.client.get('/v1/models').json()['data'][0]['backend'] == 'triton'
        via_api = image_for(s, 7)
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
    finally:
        s.stop()
