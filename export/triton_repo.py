"""Triton model repositories for a bundle: config.pbtxt plus the model in <model>/1/.

Runtimes: onnxruntime (model.onnx from the ONNX export), tensorrt (model.plan), python (sida's own
PyTorch generator running inside Triton's python backend). Each config is checked by parsing it with
Triton's own ModelConfig protobuf (shipped in tritonclient) before it is written.
"""

import shutil
from pathlib import Path

from export.ensure import ensure_export
from export.manifest import read_manifest, record_export
from export.onnx_export import ExportError, io_spec
from models.bundle import CONFIG_FILE, load_bundle

TRITON_DTYPES = {'float32': 'TYPE_FP32', 'int64': 'TYPE_INT64', 'uint8': 'TYPE_UINT8'}
BACKENDS = {'onnxruntime': ('onnxruntime', 'model.onnx'), 'tensorrt': ('tensorrt', 'model.plan'), 'python': ('python', 'model.py')}
ROOT = Path(__file__).resolve().parents[1]


def _tensor(t):
    dims = ', '.join(str(d) for d in t['shape'][1:])        # the batch axis is Triton's max_batch_size
    # A per-sample scalar ([N], e.g. class_labels) is dims [1] reshaped to [] for the model, as Triton requires.
    extra = '' if dims else '\n    reshape: { shape: [ ] }'
    return f'  {{\n    name: "{t["name"]}"\n    data_type: {TRITON_DTYPES[t["dtype"]]}\n    dims: [ {dims or 1} ]{extra}\n  }}'


def model_config(name, config, runtime, max_batch=64, preferred=(8, 16, 32, 64), queue_delay_us=2000, instances=1,
                 kind='KIND_GPU', parameters=None, gpus=None):
    """config.pbtxt text for one model. KIND_GPU: `instances` on each GPU in `gpus` (None: on every GPU Triton sees)."""
    backend, filename = BACKENDS[runtime]
    inputs, outputs = io_spec(config)
    preferred = [p for p in preferred if p <= max_batch] or [max_batch]
    lines = [f'name: "{name}"', f'backend: "{backend}"', f'max_batch_size: {max_batch}',
             'input [\n' + ',\n'.join(_tensor(t) for t in inputs) + '\n]',
             'output [\n' + ',\n'.join(_tensor(t) for t in outputs) + '\n]',
             'dynamic_batching {\n  preferred_batch_size: [ ' + ', '.join(map(str, preferred)) + ' ]\n'
             f'  max_queue_delay_microseconds: {queue_delay_us}\n}}',
             'instance_group [\n  {\n' + f'    count: {instances}\n    kind: {kind}\n'
             + (f'    gpus: [ {", ".join(map(str, gpus))} ]\n' if gpus else '') + '  }\n]']
    if runtime != 'python':
        lines.append(f'default_model_filename: "{filename}"')
    if runtime == 'onnxruntime' and kind == 'KIND_GPU':
        lines.append('optimization {\n  cuda {\n    graphs: false\n  }\n}')
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
    return '\n'.join(lines) + '\n'


def parse_config(text):
    """Parse with Triton's ModelConfig protobuf; raises ExportError on any field Triton would reject."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ExportError('validating config.pbtxt needs tritonclient: pip install "tritonclient[grpc]"') from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ExportError(f'generated config.pbtxt is invalid for Triton: {e}') from None


def write_triton_repo(bundle_dir, out, runtime='onnxruntime', name=None, max_batch=64, instances=1, kind=None,
                      precision='fp32', gpus=None, log=print):
    if runtime not in BACKENDS:
        raise ExportError(f'--runtime must be one of {sorted(BACKENDS)}, got {runtime!r}')
    if gpus and (kind or ('KIND_CPU' if runtime == 'python' else 'KIND_GPU')) != 'KIND_GPU':
        raise ExportError('--gpus places KIND_GPU instances: it does not go with --kind KIND_CPU (or the python runtime\'s '
                          'default; give --kind KIND_GPU)')
    bundle = load_bundle(bundle_dir)
    config = bundle.config
    name = name or config.name.replace('/', '_')
    kind = kind or ('KIND_CPU' if runtime == 'python' else 'KIND_GPU')
    model_dir = Path(out) / name
    version_dir = model_dir / '1'
    if version_dir.exists():
        shutil.rmtree(version_dir)
    version_dir.mkdir(parents=True)
    parameters = None
    if runtime == 'onnxruntime':
        entry = ensure_export(bundle_dir, 'onnx', precision, log=log)
        shutil.copy(Path(bundle_dir) / entry['file'], version_dir / 'model.onnx')
        data = Path(bundle_dir) / (entry['file'] + '.data')
        if data.exists():
            shutil.copy(data, version_dir / data.name)
    elif runtime == 'tensorrt':
        entry = read_manifest(bundle_dir)['exports'].get(f'tensorrt-{precision}')
        if entry is None:
            raise ExportError(f'no TensorRT engine for {precision}: run `sida export tensorrt --bundle {bundle_dir} '
                              f'--{precision}` first (inside the Docker image)')
        shutil.copy(Path(bundle_dir) / entry['file'], version_dir / 'model.plan')
    else:
        shutil.copy(Path(__file__).with_name('triton_model.py'), version_dir / 'model.py')
        (version_dir / 'bundle').mkdir()
        for f in (CONFIG_FILE, *config.sha256):          # every file the bundle hashes (latent: VAE, CLIP encoder)
            (version_dir / 'bundle' / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(bundle_dir) / f, version_dir / 'bundle' / f)
        parameters = {'sida_root': str(ROOT), 'torch_threads': '0' if kind == 'KIND_GPU' else '2'}
    text = model_config(name, config, runtime, max_batch=max_batch, instances=instances, kind=kind, parameters=parameters,
                        gpus=gpus)
    parse_config(text)
    (model_dir / 'config.pbtxt').write_text(text)
    record_export(bundle_dir, f'triton-{runtime}', {'runtime': 'triton', 'backend': runtime, 'repository': str(Path(out)),
                                                    'model': name, 'max_batch_size': max_batch, 'instance_kind': kind,
                                                    'instances': instances, 'gpus': list(gpus) if gpus else 'all',
                                                    'bundle_sha256': config.sha256})
    return model_dir
