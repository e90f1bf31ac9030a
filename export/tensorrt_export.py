"""TensorRT engines from the ONNX graph, written against the official `tensorrt` Python API (TensorRT 10).

TensorRT cannot be installed on the machines this project is developed and tested on (the PyPI
wheels fetch their libraries from NVIDIA's own index, which is unreachable here): engine building and
running happen inside the Docker image, whose NVIDIA base ships TensorRT. Everything that does not
need the library (optimisation-profile shapes, precision flags, the manifest entry) is plain Python
and tested everywhere.
"""

import time
from pathlib import Path

import torch

from export.ensure import ensure_export
from export.manifest import record_export, runtime_versions
from export.onnx_export import ExportError, io_spec
from export.parity import gate, run_parity
from models.bundle import load_bundle

TENSORRT_MISSING = ('TensorRT is not installed here (the `tensorrt` PyPI wheels download their libraries from NVIDIA\'s '
                    'index, unreachable on this machine); build engines inside the sida Docker image or any NVIDIA '
                    'TensorRT/Triton/PyTorch container, e.g. `docker run --gpus all sida sida export tensorrt ...`')
PRECISION_FLAGS = {'fp32': [], 'fp16': ['FP16'], 'bf16': ['BF16'], 'fp8': ['FP8', 'FP16']}


class TensorRTUnavailable(ExportError):
    pass


def require_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(TENSORRT_MISSING) from None
    return tensorrt


def profile_shapes(config, min_batch, opt_batch, max_batch):
    """{input name: (min, opt, max) shape} for the one optimisation profile (batch is the only free axis)."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ExportError(f'need 1 <= min-batch <= opt-batch <= max-batch, got {min_batch}, {opt_batch}, {max_batch}')
    inputs, _ = io_spec(config)
    return {i['name']: tuple(tuple([b] + i['shape'][1:]) for b in (min_batch, opt_batch, max_batch)) for i in inputs}


def builder_flags(precision):
    if precision not in PRECISION_FLAGS:
        raise ExportError(f'precision must be one of {sorted(PRECISION_FLAGS)}, got {precision!r}')
    return PRECISION_FLAGS[precision]


def build_engine(onnx_path, plan_path, precision, shapes, workspace_gib=8, timing_cache=None, log=print):
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)            # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f'TensorRT could not parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for flag in builder_flags(precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if precision == 'fp8':
        log('note: FP8 only takes effect where the ONNX graph carries Q/DQ nodes (e.g. from NVIDIA ModelOpt)')
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b''
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError('TensorRT failed to build the engine (see the builder log above)')
    Path(plan_path).write_bytes(bytes(serialized))
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))


class EngineRunner:
    """Runs a serialized engine on CUDA tensors (TensorRT 10 name-based I/O, execute_async_v3)."""

    def __init__(self, plan_path):
        trt = require_tensorrt()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        self.context = self.engine.create_execution_context()

    def __call__(self, inputs):
        stream = torch.cuda.current_stream()
        feeds = {k: v.cuda().contiguous() for k, v in inputs.items()}
        for name, tensor in feeds.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name, dtype in (('images', torch.uint8), ('images_float', torch.float32)):
            outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device='cuda')
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError('TensorRT execution failed')
        stream.synchronize()
        return outputs['images'].cpu(), outputs['images_float'].cpu()


def export_tensorrt(bundle_dir, precision='fp16', min_batch=1, opt_batch=8, max_batch=64, via='onnx', workspace_gib=8,
                    force=False, log=print):
    builder_flags(precision)
    require_tensorrt() if via == 'onnx' else None
    bundle = load_bundle(bundle_dir, return_float=True)
    shapes = profile_shapes(bundle.config, min_batch, opt_batch, max_batch)
    out_dir = Path(bundle_dir) / 'exports' / f'tensorrt-{precision}'
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if via == 'onnx':
        onnx_entry = ensure_export(bundle_dir, 'onnx', 'fp32', log=log)
        plan = out_dir / 'model.plan'
        build_engine(Path(bundle_dir) / onnx_entry['file'], plan, precision, shapes, workspace_gib,
                     timing_cache=out_dir / 'timing.cache', log=log)
        run = EngineRunner(plan)
        file = plan
    elif via == 'torch-tensorrt':
        run, file = _torch_tensorrt(bundle, precision, shapes, out_dir)
    else:
        raise ExportError(f'--via must be onnx or torch-tensorrt, got {via!r}')
    build_seconds = time.perf_counter() - started
    batches = sorted({min_batch, opt_batch, max_batch})
    report = run_parity(run, bundle.generator.cuda(), bundle.config, 'fp16' if precision == 'fp8' else precision, batches)
    entry = {'runtime': 'tensorrt', 'via': via, 'file': str(file.relative_to(Path(bundle_dir))), 'precision': precision,
             'builder_flags': builder_flags(precision), 'profile': {k: [list(s) for s in v] for k, v in shapes.items()},
             'workspace_gib': workspace_gib, 'parity': report, 'forced': bool(force and not report['passed']),
             'build_seconds': round(build_seconds, 1), 'build_device': torch.cuda.get_device_name(),
             'bundle_sha256': bundle.config.sha256, 'versions': runtime_versions('torch', 'tensorrt', 'torch_tensorrt')}
    gate(report, f'TensorRT engine {file}', force)
    record_export(bundle_dir, f'tensorrt-{precision}', entry)
    return entry


def _torch_tensorrt(bundle, precision, shapes, out_dir):
    try:
        import torch_tensorrt
    except ImportError:
        raise TensorRTUnavailable(TENSORRT_MISSING.replace('`tensorrt`', '`torch_tensorrt`')) from None
    from export.onnx_export import graph_for
    graph, names = graph_for(bundle.generator.cuda().eval(), bundle.config.condition['kind'])
    dtypes = {'noise': torch.float32, 'class_labels': torch.int64, 'text_embeds': torch.float32}
    inputs = [torch_tensorrt.Input(min_shape=shapes[n][0], opt_shape=shapes[n][1], max_shape=shapes[n][2], dtype=dtypes[n])
              for n in names]
    precisions = {'fp32': {torch.float32}, 'fp16': {torch.float16}, 'bf16': {torch.bfloat16}, 'fp8': {torch.float16}}[precision]
    module = torch_tensorrt.compile(graph, ir='dynamo', inputs=inputs, enabled_precisions=precisions)
    path = out_dir / 'model.ep'
    torch_tensorrt.save(module, str(path), inputs=inputs)

    def run(feeds):
        with torch.inference_mode():
            return tuple(t.cpu() for t in module(*[feeds[n].cuda() for n in names]))
    return run, path
