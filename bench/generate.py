"""`sida bench generate`: one bundle on several runtimes and batch sizes: latency, throughput, memory, MFU.

Backends are named as in `sida serve` (serve/runtimes.py), `<runtime>[-<precision>]`: torch-fp32, torch-bf16,
compile-bf16, onnxruntime(-fp16), tensorrt(-fp16), triton. They are serve/backends.py's Backends; with `--io device` (the default) the
PyTorch ones are timed on inputs already on the device with outputs left there (what the GPU does),
while ONNX Runtime, TensorRT and Triton always take CPU inputs and return host bytes (`io: host`), as
the server calls them. Set-up (loading, exporting, compiling, session creation, engine builds) and each
batch's warm-up calls are timed apart from the measured runs. A backend that cannot run here is a
`skipped` row with the reason; one that fails is an `error` row; neither stops the run.
"""

import contextlib
import gc
import socket
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bench.flops import generator_flops, mfu, peak_for
from bench.record import machine, percentiles, time_runs, warm_up
from models.seeds import example_inputs
from serve import runtimes

DEFAULT_BACKENDS = 'torch-fp32,torch-bf16,compile-bf16,onnxruntime,tensorrt,triton'


class Skipped(Exception):
    """The backend cannot run on this machine; the message says why."""


def parse_backend(name):
    """serve's backend names, each row naming its precision (a bare runtime takes its default)."""
    runtime, precision = runtimes.parse_backend(name)
    return runtime, precision or runtimes.DEFAULT_PRECISION[runtime]


@dataclass
class Runner:
    """A ready backend: `call(stage(cpu_inputs))` generates one batch."""
    backend: str
    runtime: str
    precision: str
    device: str
    io: str
    call: Callable
    stage: Callable = lambda inputs: inputs
    setup_s: dict = field(default_factory=dict)
    close: Callable = lambda: None
    min_warmup: int = 1
    parity: Callable = None            # batch -> the export parity gate's report for that batch (compile rows)
    options: object = None             # compile rows: their CompileOptions


def _timed(setup, key, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    setup[key] = round(time.perf_counter() - start, 3)
    return out


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def open_runner(backend, bundle_dir, device, batches, io='device', compile_mode=None, export_missing=True, triton_url=None,
                log=print, compile_options=None):
    from models.bundle import load_bundle
    from serve.backends import BackendUnavailable
    runtime, precision = parse_backend(backend)
    setup = {}
    bundle = _timed(setup, 'load_s', load_bundle, bundle_dir)
    try:
        if runtime in ('torch', 'compile'):
            return _torch_runner(backend, runtime, precision, bundle, device, batches, io, compile_mode, setup, compile_options, log)
        if runtime == 'onnxruntime':
            return _onnx_runner(backend, precision, bundle, export_missing, setup, log)
        if runtime == 'tensorrt':
            return _tensorrt_runner(backend, precision, bundle, device, batches, export_missing, setup, log)
        return _triton_runner(backend, bundle, device, batches, triton_url, setup)
    except BackendUnavailable as e:
        raise Skipped(str(e)) from None


def _torch_runner(backend, runtime, precision, bundle, device, batches, io, compile_mode, setup, options=None, log=print):
    from export.compiled import default_options
    from serve.backends import CompiledBackend, TorchBackend
    dev = torch.device(device)
    if runtime == 'torch':
        served = TorchBackend(bundle, device, precision)
        autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == 'bf16' else contextlib.nullcontext
    else:
        options = options or default_options(dev, compile_mode)
        served = _timed(setup, 'compile_setup_s', CompiledBackend, bundle, device, precision, buckets=tuple(batches), options=options,
                        log=log)
        setup.update(compile_mode=options.mode, compile_options=str(options), compile_cache=served.cache.report)
        autocast = contextlib.nullcontext           # compile_generator casts the UNet body itself
    close = (lambda: torch._dynamo.reset()) if runtime == 'compile' else (lambda: None)
    min_warmup = 3 if runtime == 'compile' else 1   # compile on the first call, CUDA graphs recorded on the second
    parity = _parity_check(served, bundle.path, device) if runtime == 'compile' else None
    if io == 'host':
        return Runner(backend, runtime, precision, str(dev), 'host', served.generate, setup_s=setup, close=close,
                      min_warmup=min_warmup, parity=parity, options=options)
    module, mark_step = served.generator, runtime == 'compile' and dev.type == 'cuda'

    def call(feeds):
        with torch.inference_mode(), autocast():
            if mark_step:
                torch.compiler.cudagraph_mark_step_begin()
            return module(**feeds)
    return Runner(backend, runtime, precision, str(dev), 'device', call, lambda inputs: {k: v.to(dev) for k, v in inputs.items()},
                  setup, close, min_warmup, parity, options)


def _parity_check(served, bundle_dir, device):
    """The export parity gate for a compiled backend: its (images, floats) against the eager fp32 generator, per batch."""
    from export.parity import run_parity
    from models.bundle import load_bundle
    reference = load_bundle(bundle_dir, return_float=True, device=device).generator

    def run(inputs):
        with torch.inference_mode():
            torch.compiler.cudagraph_mark_step_begin()
            out = served.generator(**{k: v.to(device) for k, v in inputs.items()})
            return tuple(t.cpu().clone() for t in out)

    def check(batch):
        report = run_parity(run, reference, served.config, served.precision, (batch,))
        return {**report['batches'][0], 'tolerance': report['tolerance']}
    return check


def _ensure_export(backend, bundle, kind, precision, export_missing, setup, log, **options):
    """Export if missing (timed as set-up, not measured); a backend that cannot be exported here is skipped."""
    from export.ensure import ExportMissing, ensure_export, recorded_export
    from export.onnx_export import ExportError
    from export.parity import ParityError
    if not export_missing:
        try:
            return recorded_export(bundle.path, bundle.config, kind, precision)
        except ExportMissing as e:
            raise Skipped(f'{e} (or drop --no-export)') from None
    try:
        return _timed(setup, 'export_s', ensure_export, bundle.path, kind, precision, log=lambda m: log(f'{backend}: {m}'), **options)
    except ImportError as e:
        raise Skipped(f'exporting {kind} needs the `{e.name}` package, not installed here') from None
    except (ExportError, ParityError) as e:
        raise Skipped(f'the {kind} export failed: {e}') from None


def _onnx_runner(backend, precision, bundle, export_missing, setup, log):
    from serve.backends import OnnxBackend
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise Skipped('onnxruntime is not installed (pip install onnxruntime)') from None
    setup['exporter'] = _ensure_export(backend, bundle, 'onnx', precision, export_missing, setup, log)['exporter']
    served = _timed(setup, 'session_s', OnnxBackend, bundle, precision)
    setup['providers'] = served.session.get_providers()
    return Runner(backend, 'onnxruntime', precision, served.device, 'host', served.generate, setup_s=setup)


def _tensorrt_runner(backend, precision, bundle, device, batches, export_missing, setup, log):
    from export.tensorrt_export import TensorRTUnavailable, require_tensorrt
    from serve.backends import TensorRTBackend
    try:
        require_tensorrt()
    except TensorRTUnavailable as e:
        raise Skipped(str(e)) from None
    if torch.device(device).type != 'cuda':
        raise Skipped('TensorRT runs on CUDA GPUs only; this run is on the CPU')
    _ensure_export(backend, bundle, 'tensorrt', precision, export_missing, setup, log, min_batch=min(batches),
                   opt_batch=max(batches), max_batch=max(batches))
    served = _timed(setup, 'engine_load_s', TensorRTBackend, bundle, precision)
    return Runner(backend, 'tensorrt', precision, 'cuda', 'host', served.generate, setup_s=setup)


def _triton_runner(backend, bundle, device, batches, triton_url, setup):
    """An external Triton (--triton-url), or sida's eager backend inside a local PyTriton server."""
    from serve.backends import TorchBackend, TritonBackend
    if triton_url:
        served = _timed(setup, 'client_s', TritonBackend, bundle, triton_url)
        return Runner(backend, 'triton', 'server-side', served.device, 'host', served.generate, setup_s=setup)
    from serve.pytriton_server import check_numpy, start_triton
    try:
        check_numpy()
        import pytriton  # noqa: F401
        import tritonclient.http  # noqa: F401
    except RuntimeError as e:
        raise Skipped(f'{e}; or benchmark an external server with --triton-url') from None
    except ImportError as e:
        raise Skipped(f'a local Triton needs `{e.name}` (nvidia-pytriton and tritonclient[http]), not installed here; '
                      'or benchmark an external server with --triton-url') from None
    inner = TorchBackend(bundle, device, 'fp32')
    http_port, grpc_port, metrics_port = _free_ports(3)
    model = types.SimpleNamespace(id='sida_bench', config=bundle.config, replicas=[types.SimpleNamespace(backend=inner)])
    triton = _timed(setup, 'triton_start_s', start_triton, [model], http_port, grpc_port, metrics_port,
                    max_batch=max(batches), max_delay_ms=0.0)
    try:
        served = TritonBackend(bundle, f'http://127.0.0.1:{http_port}', model='sida_bench')
    except Exception:
        triton.stop()
        raise
    setup['inner_backend'] = f'torch-fp32 on {inner.device} (PyTriton, KServe v2 HTTP)'

    def close():
        served.client.close()       # Triton waits for open client connections before it stops
        triton.stop()
    return Runner(backend, 'triton', 'fp32', inner.device, 'host', served.generate, setup_s=setup, close=close)


def measure(runner, config, batch, runs, warmup, max_seconds, flops_per_image, peak, warmup_seconds=1.0, profile_dir=None):
    """One (backend, batch) configuration: warm-up calls (timed apart), the measured runs, then (compile rows) the
    parity gate and (with profile_dir) a profile of a few more calls."""
    cuda = runner.device.startswith('cuda')
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    inputs = runner.stage(example_inputs(config, batch))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup_s, warmup_calls = warm_up(lambda: runner.call(inputs), max(warmup, runner.min_warmup), warmup_seconds, sync)
    times = time_runs(lambda: runner.call(inputs), runs, sync, max_seconds)
    images_per_s = batch * len(times) / sum(times)
    peak_mib = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
    extra = {}
    if runner.options is not None:
        extra.update(compile_mode=runner.options.mode, compile_options=str(runner.options), freezing=runner.options.freezing,
                     channels_last=runner.options.channels_last)
    if runner.parity is not None:
        extra['parity'] = runner.parity(batch)
    if profile_dir:
        from bench.profiling import profile_calls
        label = '-'.join(filter(None, [runner.backend, str(runner.options or '').replace('+', '-')]))
        extra['profile'] = profile_calls(lambda: runner.call(inputs), Path(profile_dir) / f'profile-{label}-b{batch}', sync=sync)
    return {'kind': 'generate', 'backend': runner.backend, 'runtime': runner.runtime, 'precision': runner.precision, **extra,
            'device': runner.device, 'io': runner.io, 'batch': batch, 'runs': len(times), **percentiles(times),
            'ms_per_image': 1000 * sum(times) / len(times) / batch, 'images_per_s': images_per_s,
            'peak_gpu_memory_mib': peak_mib,
            'flops_per_image': flops_per_image,
            'tflops': flops_per_image * images_per_s / 1e12 if flops_per_image else None,
            'mfu': mfu(flops_per_image, images_per_s, peak), 'warmup_s': round(warmup_s, 3), 'warmup_calls': warmup_calls,
            'setup_s': runner.setup_s}


def _describe(row):
    name = f'{row["backend"]} [{row["compile_options"]}]' if row.get('compile_options') else row['backend']
    if 'skipped' in row:
        return f'{name}: skipped ({row["skipped"]})'
    if 'error' in row:
        return f'{name} batch {row["batch"]}: error ({row["error"]})'
    util = f', MFU {100 * row["mfu"]:.1f}%' if row.get('mfu') is not None else ''
    parity = row.get('parity')
    gate = f', parity {"ok" if parity["passed"] else "FAILED"} (max abs {parity.get("max_abs_float", float("nan")):.3g})' if parity else ''
    return (f'{name:>14} batch {row["batch"]:>4}: p50 {row["p50_ms"]:9.3f} ms  p99 {row["p99_ms"]:9.3f} ms  '
            f'{row["images_per_s"]:10.1f} img/s{util}, warm-up {row["warmup_s"]:.1f} s{gate}')


def run_generate(bundle_spec, backends, batches, runs=20, warmup=3, max_seconds=30.0, device=None, io='device', compile_mode=None,
                 export_missing=True, triton_url=None, peak_override=None, log=print, progress=True, warmup_seconds=1.0,
                 compile_variants=None, profile_dir=None, on_row=None):
    """Measure every (backend, batch); returns (machine info, settings, rows). compile_variants: CompileOptions, each
    measured for every compile backend (default: --compile-mode alone). on_row(info, settings, rows) after every row, so
    that a run cut short (a time limit) still leaves what it measured."""
    from tqdm import tqdm

    from bench.presets import resolve_bundle
    from models.bundle import validate_bundle
    for b in backends:
        parse_backend(b)
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    bundle_dir = resolve_bundle(bundle_spec, log=log)
    config = validate_bundle(bundle_dir)
    gpu = torch.device(device).type == 'cuda'
    info = machine(gpu)
    peak, peak_source = peak_for(info, gpu, peak_override)
    flops = {}
    for b in batches:
        try:
            flops[b] = generator_flops(config, b) / b
        except Exception as e:      # counting is best effort: a network that cannot run on `meta` gets no MFU
            log(f'FLOP count failed at batch {b}: {type(e).__name__}: {e}')
            flops[b] = None
    settings = {'bundle': str(bundle_spec), 'bundle_dir': str(bundle_dir), 'model': config.name,
                'architecture': config.architecture['network'], 'resolution': config.resolution,
                'condition': config.condition['kind'], 'provenance': config.provenance, 'backends': list(backends),
                'batches': list(batches), 'runs': runs, 'warmup': warmup, 'warmup_seconds': warmup_seconds,
                'max_seconds_per_config': max_seconds, 'cudnn_benchmark': torch.backends.cudnn.benchmark,
                'device': device, 'io': io, 'compile_mode': compile_mode, 'export_missing': export_missing,
                'compile_variants': [str(v) for v in compile_variants or []], 'profiled': bool(profile_dir),
                'peak_tflops_bf16_dense': peak, 'peak_source': peak_source,
                'flops_counter': 'torch.utils.flop_counter.FlopCounterMode on the fp32 generator (meta device)',
                'timing': 'wall clock per call, fenced by torch.cuda.synchronize on GPU; warm-up calls excluded'}
    rows = []
    plan = [(b, v) for b in backends for v in ((compile_variants or [None]) if parse_backend(b)[0] == 'compile' else [None])]
    bar = tqdm(total=len(plan) * len(batches), desc='bench generate', unit='config', disable=not progress)
    for backend, variant in plan:
        tag = {'compile_options': str(variant)} if variant else {}
        try:
            runner = open_runner(backend, bundle_dir, device, batches, io, compile_mode, export_missing, triton_url, log, variant)
        except Exception as e:
            key, reason = ('skipped', str(e)) if isinstance(e, Skipped) else ('error', f'{type(e).__name__}: {e}')
            rows += [{'kind': 'generate', 'backend': backend, **tag, 'batch': b, key: reason[:1000]} for b in batches]
            bar.write(_describe(rows[-1]))
            if on_row:
                on_row(info, settings, rows)
            bar.update(len(batches))
            continue
        try:
            for b in batches:
                try:
                    row = measure(runner, config, b, runs, warmup, max_seconds, flops[b],
                                  peak if runner.device.startswith('cuda') == gpu else None, warmup_seconds, profile_dir)
                except Exception as e:   # e.g. out of memory at the largest batch: record it, go on
                    row = {'kind': 'generate', 'backend': backend, **tag, 'batch': b, 'device': runner.device,
                           'error': f'{type(e).__name__}: {e}'[:1000]}
                    if gpu:
                        torch.cuda.empty_cache()
                rows.append(row)
                bar.write(_describe(row))
                if on_row:
                    on_row(info, settings, rows)
                bar.update(1)
        finally:
            runner.close()
            del runner
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
    bar.close()
    return info, settings, rows
