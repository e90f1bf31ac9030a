"""torch.compile as an export target: not a file, but the same parity gate and a manifest entry.

On CUDA: bf16, mode max-autotune (which captures CUDA graphs) with static shapes, warmed up once per
batch bucket, so a server pads each batch up to the nearest bucket and never recompiles under load.
"""

import time

import torch

from export.manifest import record_export, runtime_versions
from export.onnx_export import PRECISIONS, ExportError
from export.parity import gate, run_parity
from models.bundle import load_bundle

DEFAULT_BUCKETS = (1, 8, 64, 256)


def compile_generator(generator, precision='bf16', mode='max-autotune', device='cuda'):
    """Cast the UNet body, compile the whole generator (static shapes, one graph per bucket)."""
    if precision not in PRECISIONS:
        raise ExportError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
    generator = generator.to(device).eval()
    if precision != 'fp32':
        generator.denoiser.model.to(PRECISIONS[precision])
        generator.denoiser.compute_dtype = PRECISIONS[precision]
    return torch.compile(generator, mode=mode, fullgraph=True, dynamic=False)


def warm_up(compiled, config, buckets, device):
    """Compile (and capture) every bucket before serving; returns seconds per bucket."""
    from export.parity import parity_inputs
    seconds = {}
    for b in buckets:
        inputs = {k: v.to(device) for k, v in parity_inputs(config, b).items()}
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(2):                      # CUDA graphs record on the second call
                compiled(**inputs)
        if str(device).startswith('cuda'):
            torch.cuda.synchronize()
        seconds[b] = round(time.perf_counter() - start, 2)
    return seconds


def export_compiled(bundle_dir, precision=None, mode=None, buckets=DEFAULT_BUCKETS, device=None, force=False):
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    precision = precision or ('bf16' if device == 'cuda' else 'fp32')
    mode = mode or ('max-autotune' if device == 'cuda' else 'default')
    bundle = load_bundle(bundle_dir, return_float=True)
    compiled = compile_generator(bundle.generator, precision, mode, device)
    warm = warm_up(compiled, bundle.config, buckets, device)

    def run(inputs):
        with torch.inference_mode():
            return tuple(t.cpu().clone() for t in compiled(**{k: v.to(device) for k, v in inputs.items()}))
    report = run_parity(run, load_bundle(bundle_dir, return_float=True, device=device).generator, bundle.config, precision, buckets)
    entry = {'runtime': 'torch.compile', 'file': None, 'precision': precision, 'mode': mode, 'buckets': list(buckets),
             'cuda_graphs': device == 'cuda' and 'no-cudagraphs' not in mode, 'warmup_seconds': warm, 'parity': report,
             'forced': bool(force and not report['passed']), 'build_device': device, 'bundle_sha256': bundle.config.sha256,
             'versions': runtime_versions('torch')}
    gate(report, f'torch.compile ({mode}, {precision})', force)
    record_export(bundle_dir, f'torch_compile-{precision}', entry)
    return entry
