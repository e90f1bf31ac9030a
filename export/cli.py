"""`sida export`: ONNX, TensorRT, torch.compile and Triton repositories, each behind the parity gate."""

import dataclasses
import json
from pathlib import Path

import click

from sida.cli_options import (
    COMPILE_MODES,
    CPU_COMPILE_DEFAULT,
    CTX,
    CUDA_COMPILE_DEFAULT,
    DTYPES,
    SAVE_DTYPES,
    device_option,
    resolve_device,
)

BUNDLE = click.option('--bundle', 'bundle_dir', required=True, type=click.Path(file_okay=False, path_type=Path),
                      help='Bundle directory; exports go to BUNDLE/exports/ and exports/manifest.json.')
FORCE = click.option('--force', is_flag=True, help='Keep an export that fails the parity gate (the manifest records it).')


def precision_option(choices, default, shown=None):
    return click.option('--precision', type=click.Choice(choices), default=default, show_default=shown or True,
                        help='Precision of the network body (I/O stays float32/uint8).')


def _run(fn, *args, **kwargs):
    """Run an export; every expected failure becomes one line and a non-zero exit."""
    from export.onnx_export import ExportError
    from export.parity import ParityError
    from models.bundle import BundleError
    try:
        return fn(*args, **kwargs)
    except (BundleError, ExportError, ParityError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


def _summary(entry):
    parity = entry.get('parity') or {}
    worst = max((r.get('max_abs_float', 0) for r in parity.get('batches', [])), default=None)
    return {k: entry.get(k) for k in ('runtime', 'file', 'precision', 'exporter', 'forced')} | {
        'parity_passed': parity.get('passed'), 'worst_max_abs_float': worst}


@click.group(context_settings=CTX)
def export():
    """Export a bundle's generator; every export is checked against eager PyTorch (the parity gate).

    `from-pickle` goes the other way: it makes a bundle of a one-step generator pickled by the SiD / SiDA authors' code.
    """


@export.command(context_settings=CTX)
@BUNDLE
@precision_option(list(DTYPES), 'fp32')
@click.option('--opset', type=click.IntRange(17), default=18, help='ONNX opset (17 or newer).')
@click.option('--exporter', type=click.Choice(['dynamo', 'torchscript']), default='dynamo',
              help='dynamo (current) falls back to torchscript only if it fails, and says so.')
@FORCE
def onnx(bundle_dir, precision, opset, exporter, force):
    """ONNX graph (dynamic batch) checked with ONNX Runtime at batch 1, 3 and 8."""
    from export.onnx_export import export_onnx
    entry = _run(export_onnx, bundle_dir, precision, opset, force, exporter=exporter, log=click.echo)
    click.echo(json.dumps(_summary(entry), indent=2))


@export.command(name='compile', context_settings=CTX)
@BUNDLE
@precision_option(list(DTYPES), None, 'bf16 on CUDA, fp32 on CPU')
@click.option('--mode', type=click.Choice(COMPILE_MODES), default=None,
              show_default=f'{CUDA_COMPILE_DEFAULT} on CUDA, {CPU_COMPILE_DEFAULT} on CPU (a given mode keeps the switches; '
                           'CUDA-graph modes drop whole-graph)',
              help='torch.compile mode (reduce-overhead: CUDA graphs; max-autotune: also tunes kernels, paid once here).')
@click.option('--freezing/--no-freezing', default=False, help='Inductor freezing: weights become constants it folds (inference only).')
@click.option('--channels-last/--no-channels-last', default=None, show_default='on CUDA',
              help='NHWC weights, and inductor keeps convolutions NHWC.')
@click.option('--buckets', default='1,8,32,64,128,256', show_default=True,
              help='Batch sizes to compile and check. A server compiles 1, the powers of 8 below its --max-batch, and '
                   '--max-batch itself; export those to skip all compiling at its start.')
@device_option()
@FORCE
def compile_(bundle_dir, precision, mode, freezing, channels_last, buckets, device, force):
    """torch.compile the generator (CUDA graphs, bf16 on GPU), check it like a file export, and save the compiled code
    into BUNDLE/exports/torch_compile/ so that `sida serve --backend compile` loads it instead of compiling (it then
    takes these options unless --compile-mode says otherwise)."""
    from export.compiled import default_options, export_compiled
    device = resolve_device(device)
    default = default_options(device, mode)
    options = dataclasses.replace(default, freezing=freezing,
                                  channels_last=default.channels_last if channels_last is None else channels_last)
    entry = _run(export_compiled, bundle_dir, precision, options, tuple(int(b) for b in buckets.split(',')), device, force,
                 log=click.echo)
    click.echo(json.dumps(_summary(entry) | {'options': entry['options']['spec'], 'warmup_seconds': entry['warmup_seconds'],
                                             'cache': entry['cache']['counters']}, indent=2))


@export.command(context_settings=CTX)
@BUNDLE
@precision_option([*DTYPES, 'fp8'], 'fp16')
@click.option('--min-batch', type=click.IntRange(1), default=1, help='Smallest batch of the optimisation profile.')
@click.option('--opt-batch', type=click.IntRange(1), default=8, help='Batch the engine is tuned for.')
@click.option('--max-batch', type=click.IntRange(1), default=64, help='Largest batch of the optimisation profile.')
@click.option('--workspace-gib', type=float, default=8.0, help='Builder workspace limit.')
@click.option('--via', type=click.Choice(['onnx', 'torch-tensorrt']), default='onnx',
              help='Build from the ONNX export or with Torch-TensorRT.')
@FORCE
def tensorrt(bundle_dir, precision, min_batch, opt_batch, max_batch, workspace_gib, via, force):
    """Serialized TensorRT engine (one optimisation profile over the batch axis). Needs TensorRT (Docker image)."""
    from export.tensorrt_export import export_tensorrt
    entry = _run(export_tensorrt, bundle_dir, precision, min_batch, opt_batch, max_batch, via, workspace_gib, force, log=click.echo)
    click.echo(json.dumps(_summary(entry), indent=2))


def _gpu_list(value):
    """'0,1' -> [0, 1]; a usage error for anything but distinct GPU indices."""
    if value is None:
        return None
    try:
        gpus = [int(v) for v in value.split(',')]
    except ValueError:
        raise click.BadParameter(f'{value!r}: give GPU indices, e.g. 0,1') from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise click.BadParameter(f'{value!r}: GPU indices must be distinct and >= 0')
    return gpus


@export.command(name='triton-repo', context_settings=CTX)
@BUNDLE
@click.option('--out', required=True, type=click.Path(file_okay=False, path_type=Path),
              help='The model repository folder (the model goes to OUT/NAME/1/).')
@click.option('--runtime', type=click.Choice(['onnxruntime', 'tensorrt', 'python']), default='onnxruntime',
              help='Triton backend: an ONNX export, a TensorRT engine, or sida\'s generator in Triton\'s python backend.')
@click.option('--name', default=None, show_default='the bundle name', help='Model name in the repository.')
@click.option('--max-batch', type=click.IntRange(1), default=64, help='max_batch_size in config.pbtxt.')
@click.option('--instances', type=click.IntRange(1), default=1,
              help='Model instances (instance_group count): per GPU for KIND_GPU, in all for KIND_CPU.')
@click.option('--kind', type=click.Choice(['KIND_GPU', 'KIND_CPU']), default=None,
              show_default='KIND_GPU; KIND_CPU for python', help='Where Triton runs the instances.')
@click.option('--gpus', default=None, callback=lambda ctx, param, value: _gpu_list(value), show_default='every GPU Triton sees',
              help='KIND_GPU: the GPUs that get --instances each, e.g. 0,1 (the instance_group\'s gpus).')
@click.option('--precision', type=click.Choice(DTYPES), default='fp32', help='Which export to package.')
def triton_repo(bundle_dir, out, runtime, name, max_batch, instances, kind, gpus, precision):
    """A Triton model repository (config.pbtxt validated with Triton's own protobuf)."""
    from export.triton_repo import write_triton_repo
    model_dir = _run(write_triton_repo, bundle_dir, out, runtime, name, max_batch, instances, kind, precision, gpus,
                     log=click.echo)
    click.echo(f'wrote {model_dir} (serve it: tritonserver --model-repository {out})')


@export.command(name='from-pickle', context_settings=CTX)
@click.argument('pickle_path', metavar='PICKLE', type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option('--out', required=True, type=click.Path(file_okay=False, path_type=Path), help='Bundle directory to write.')
@click.option('--init-sigma', type=float, default=2.5, show_default=True, help="The generator's fixed input noise level.")
@click.option('--labels', default=None, show_default='the class indices',
              help="Class names of a class-conditional network: 'cifar10' or a comma-separated list.")
@click.option('--name', default=None, show_default='the pickle file name', help='Model name in the bundle (and the API).')
@click.option('--key', default='ema', show_default=True, help='Entry of the snapshot dict that holds the network.')
@click.option('--save-dtype', type=click.Choice([*DTYPES, *SAVE_DTYPES.values()]), default='fp32', show_default=True,
              help='Precision of the stored weights (float32, float16, bfloat16: the same, as earlier versions spelt them).')
def from_pickle(pickle_path, out, init_sigma, labels, name, key, save_dtype):
    """A one-step generator from the SiD / SiDA authors' code (an EDM-format pickle) as a bundle.

    The pickle is read without running any code from it. Then serve it (`sida serve --bundle OUT`) or export it.
    """
    import pickle

    from export.from_pickle import PickleImportError, bundle_from_pickle
    try:
        config = bundle_from_pickle(pickle_path, out, init_sigma=init_sigma, name=name, labels=labels, key=key,
                                    dtype=SAVE_DTYPES.get(save_dtype, save_dtype))
    except PickleImportError as e:
        raise click.BadParameter(str(e), param_hint=e.param) from None
    except (pickle.UnpicklingError, ValueError, EOFError) as e:
        raise click.ClickException(f'{pickle_path}: {e}' if str(pickle_path) not in str(e) else str(e)) from None
    click.echo(f'wrote bundle {config.name!r} ({config.condition["kind"]}, {config.resolution}x{config.resolution}, '
               f'init_sigma {config.init_sigma}) to {out}')


@export.command(context_settings=CTX)
@BUNDLE
def verify(bundle_dir):
    """Re-run the parity gate of the recorded ONNX exports against the bundle as it is now."""
    from export.verify import verify_exports
    results = _run(verify_exports, bundle_dir)
    if not results:
        raise click.ClickException(f'{bundle_dir} has no recorded ONNX exports to verify; make one with `sida export onnx`')
    click.echo(json.dumps({k: {'passed': v['passed'], **({'reason': v['reason']} if 'reason' in v else {})}
                           for k, v in results.items()}, indent=2))
    if not all(v['passed'] for v in results.values()):
        raise click.ClickException('some exports no longer match the bundle')
