"""TensorRT: what can be checked without the library everywhere; the build itself where TensorRT exists."""

import importlib.util

import pytest

from export.onnx_export import ExportError
from export.tensorrt_export import TENSORRT_MISSING, TensorRTUnavailable, builder_flags, export_tensorrt, profile_shapes
from models.bundle import load_bundle

HAS_TRT = importlib.util.find_spec('tensorrt') is not None


def test_profile_covers_the_batch_axis_only(class_bundle):
    shapes = profile_shapes(load_bundle(class_bundle).config, 1, 8, 64)
    assert shapes == {'noise': ((1, 3, 16, 16), (8, 3, 16, 16), (64, 3, 16, 16)), 'class_labels': ((1,), (8,), (64,))}
    with pytest.raises(ExportError, match='min-batch <= opt-batch'):
        profile_shapes(load_bundle(class_bundle).config, 8, 4, 64)


def test_precision_flags():
    assert builder_flags('fp32') == [] and builder_flags('fp16') == ['FP16'] and builder_flags('bf16') == ['BF16']
    assert builder_flags('fp8') == ['FP8', 'FP16']
    with pytest.raises(ExportError):
        builder_flags('int3')


@pytest.mark.skipif(HAS_TRT, reason='TensorRT is installed: the refusal path does not apply')
def test_missing_tensorrt_is_said_plainly(class_bundle):
    with pytest.raises(TensorRTUnavailable, match='TensorRT is not installed here'):
        export_tensorrt(class_bundle, 'fp16')
    assert 'Docker image' in TENSORRT_MISSING


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason='TensorRT cannot be installed on this machine (PyPI wheels fetch from NVIDIA\'s index); '
                                        'runs in the Docker image')
def test_engine_build_and_parity(class_bundle):
    entry = export_tensorrt(class_bundle, 'fp16', 1, 4, 8)
    assert entry['parity']['passed']
