"""Triton model repositories: configs parsed by Triton's protobuf; the python backend served by real tritonserver."""

import socket

import numpy as np
import pytest
import torch

from export.onnx_export import ExportError
from export.triton_repo import model_config, parse_config, write_triton_repo
from models.bundle import load_bundle

pytest.importorskip('tritonclient', reason='tritonclient is not installed (the [serve] extra)')


def _port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_configs_parse_with_tritons_protobuf(class_bundle):
    config = load_bundle(class_bundle).config
    for runtime in ('onnxruntime', 'tensorrt', 'python'):
        parsed = parse_config(model_config('m', config, runtime, max_batch=32, instances=2, kind='KIND_GPU'))
        assert parsed.max_batch_size == 32 and parsed.instance_group[0].count == 2
        assert [i.name for i in parsed.input] == ['noise', 'class_labels'] and list(parsed.input[0].dims) == [3, 16, 16]
        assert list(parsed.input[1].dims) == [1] and list(parsed.input[1].reshape.shape) == []
        assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    with pytest.raises(ExportError, match='invalid for Triton'):
        parse_config('name: "m"\nmax_batch_size: lots\n')


def test_instances_placed_on_chosen_gpus(class_bundle, tmp_path):
    """--gpus: the instance group lists them (Triton puts `count` instances on each); without it, it lists none (every
    GPU Triton sees); on CPU instances it is refused."""
    from click.testing import CliRunner

    from export.cli import export
    config = load_bundle(class_bundle).config
    placed = parse_config(model_config('m', config, 'onnxruntime', instances=2, gpus=[0, 3])).instance_group[0]
    assert (placed.count, list(placed.gpus)) == (2, [0, 3])
    assert list(parse_config(model_config('m', config, 'onnxruntime')).instance_group[0].gpus) == []
    with pytest.raises(ExportError, match='KIND_CPU'):
        write_triton_repo(class_bundle, tmp_path / 'repo', 'python', gpus=[0], log=lambda m: None)
    result = CliRunner().invoke(export, ['triton-repo', '--bundle', str(class_bundle), '--out', str(tmp_path / 'r'),
                                         '--gpus', '0,0'])
    assert result.exit_code == 2 and 'distinct' in result.output


def test_onnxruntime_repository_layout(class_bundle, tmp_path):
    model_dir = write_triton_repo(class_bundle, tmp_path / 'repo', 'onnxruntime', name='gen', log=lambda m: None)
    assert (model_dir / '1' / 'model.onnx').stat().st_size > 10_000
    assert parse_config((model_dir / 'config.pbtxt').read_text()).backend == 'onnxruntime'


def test_tensorrt_repository_needs_an_engine_first(class_bundle, tmp_path):
    with pytest.raises(ExportError, match='run `sida export tensorrt'):
        write_triton_repo(class_bundle, tmp_path / 'repo', 'tensorrt')


def test_python_backend_repository_served_by_real_tritonserver(class_bundle, tmp_path):
    pytest.importorskip('pytriton', reason='nvidia-pytriton (which ships tritonserver) is not installed')
    import tritonclient.http as httpclient

    from export import tritonserver
    write_triton_repo(class_bundle, tmp_path / 'repo', 'python', name='gen', kind='KIND_CPU')
    http = _port()
    process = tritonserver.start(tmp_path / 'repo', tmp_path / 'ws', http, _port(), _port(), log_path=tmp_path / 'triton.log')
    client = None
    try:
        client = tritonserver.wait_ready(http, process, timeout=180)
        noise = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
        labels = np.array([[0], [4], [9]], dtype=np.int64)
        inputs = [httpclient.InferInput('noise', noise.shape, 'FP32'), httpclient.InferInput('class_labels', labels.shape, 'INT64')]
        inputs[0].set_data_from_numpy(noise)
        inputs[1].set_data_from_numpy(labels)
        result = client.infer('gen', inputs)
        generator = load_bundle(class_bundle, return_float=True).generator
        with torch.no_grad():
            images, floats = generator(torch.from_numpy(noise), torch.from_numpy(labels[:, 0]))
        assert np.abs(result.as_numpy('images_float') - floats.numpy()).max() < 1e-5
        assert np.abs(result.as_numpy('images').astype(int) - images.numpy().astype(int)).max() <= 1
    finally:
        tritonserver.stop(process, client)
