"""Turning command-line choices into a running trainer: devices, torchrun, models, data, bundles."""

import copy
import dataclasses
import json
import os
from pathlib import Path

import torch

from models.architecture import PRESETS, build_denoiser
from models.bundle import load_bundle, read_config, save_bundle, sha256_file
from models.generator import OneStepGenerator
from models.images import make_grid, save_png
from models.seeds import noise_for_seeds
from models.teacher_loader import load_teacher
from train import runner
from train.batches import CaptionTable, ImageBatches
from train.data import DataStream, ImageDataset


@dataclasses.dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = 'cpu'
    launched: bool = False          # started by torchrun: DDP even for one process (the same code path as for N)

    @property
    def distributed(self):
        return self.world > 1 or self.launched


def setup_runtime(device='auto'):
    """Single process, or one process per GPU/CPU slot under torchrun (NCCL on GPU, gloo on CPU). Under torchrun the
    networks are DDP-wrapped whatever the world size, so one GPU runs (and tests) the multi-GPU code path."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    launched = 'TORCHELASTIC_RUN_ID' in os.environ
    rank, local_rank = int(os.environ.get('RANK', '0')), int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available() if device == 'auto' else device == 'cuda'
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError('--device cuda was asked for but CUDA is not available')
    dev = f'cuda:{local_rank}' if use_cuda else 'cpu'
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if (world > 1 or launched) and not torch.distributed.is_initialized():
        torch.distributed.init_process_group('nccl' if use_cuda else 'gloo')
    return Runtime(rank, world, local_rank, dev, launched)


def precision_dtype(precision, device):
    if precision == 'auto':
        precision = 'bf16' if str(device).startswith('cuda') else 'fp32'
    return {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': None}[precision]


def configure_backends(tf32):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


# Inductor settings for compiled training, measured together on the H200 with DDPM++ CIFAR-10
# (bench/results/nvidia-h200/NOTES.md): channels-last inside the graph, although the UNet decoder's concat
# convolutions (in = 2 x out channels) trip inductor's heuristic against it (cuDNN otherwise transposes around every
# convolution: 19% of the GPU time), and 1x1 convolutions as matmuls.
INDUCTOR_OPTIONS = {'force_layout_optimization': True, 'conv_1x1_as_mm': True}


def compile_options(mode):
    """torch.compile takes a mode or options, not both: the mode's own options plus ours, for this compile only."""
    from torch._inductor import list_mode_options
    return {**(list_mode_options(mode) if mode != 'default' else {}), **INDUCTOR_OPTIONS}


def uses_cuda_graphs(mode):
    return bool(mode) and compile_options(mode).get('triton.cudagraphs', False)


# A trainer's networks are copies of one class, so their compiled graphs are entries of one code object, whose
# default limit is 8. SiDA makes 7 (the frozen G's pass, f_psi's training pass and its encoder pass on reals; G's
# training pass, the teacher's and f_psi's passes with input gradients; f_psi's logits pass once the adversarial term
# starts); past the limit dynamo would run the rest eagerly, with one warning. 32 is headroom for other trainers.
RECOMPILE_LIMIT = 32


def prepare(module, device, channels_last=False, compile_=None):
    """Move (and optionally convert / compile) a network; compile_ is None/False or a torch.compile mode name."""
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile_:
        # In place (state-dict keys stay the same) with static shapes, one graph per call signature: dynamo would
        # otherwise make the batch dimension dynamic once one code object sees two batch sizes (a guided teacher's
        # doubled batch) and compile every later graph with generic-size kernels. A deep copy (a trainer's EMA) is
        # not compiled. Inductor's caches persist (export/compile_cache.py), so a second run here loads its graphs.
        from export.compile_cache import raise_recompile_limit, use_cache_dir
        use_cache_dir()
        raise_recompile_limit(RECOMPILE_LIMIT)
        module.compile(options=compile_options(compile_), dynamic=False)
    return module


def condition_of(spec, bundle_condition=None, class_names=None):
    """The student's condition record: from the teacher bundle if it has one, else from the data set."""
    if bundle_condition is not None:
        return bundle_condition
    kw = spec['network_kwargs']
    if kw.get('text_dim'):
        raise ValueError('a text-conditioned teacher must come as a sida bundle (it names its text encoder)')
    if kw.get('label_dim'):
        names = class_names if class_names and len(class_names) == kw['label_dim'] else [str(i) for i in range(kw['label_dim'])]
        return {'kind': 'class', 'labels': list(names)}
    return {'kind': 'none'}


def load_data(path, prefix, resolution, channels, max_images, runtime, global_batch, seed, captions=None):
    dataset = ImageDataset(path, resolution=resolution, channels=channels, prefix=prefix or '', max_images=max_images,
                           captions=captions)
    stream = DataStream(dataset, global_batch, seed=seed, rank=runtime.rank, world=runtime.world)
    return dataset, stream


def make_batches(dataset, stream, label_dim, condition, device):
    if label_dim and dataset.label_dim != label_dim:
        raise ValueError(f'the data set has {dataset.label_dim} classes but the model expects {label_dim}')
    text_table = None
    if condition['kind'] == 'text':
        if dataset.captions is None:
            raise ValueError('a text-conditioned model needs captions: --captions FILE (`sida train captions` makes one) '
                             'or dataset.json with "captions": [[file, text], ...]')
        from models.text_encoder import get_text_encoder
        text_table = CaptionTable(dataset.captions, get_text_encoder(condition['encoder'], condition['max_tokens']))
    return ImageBatches(stream, device, label_dim, text_table)


def sample_grid_writer(net_fn, condition, shape, device, seeds=range(64), text_prompts=None):
    """A callable writing a PNG grid from fixed seeds (classes cycle through the labels)."""
    seeds = list(seeds)
    noise = noise_for_seeds(seeds, shape).to(device)
    cond = {}
    if condition['kind'] == 'class':
        labels = torch.arange(len(seeds)) % len(condition['labels'])
        cond['class_labels'] = torch.nn.functional.one_hot(labels, len(condition['labels'])).float().to(device)
    elif condition['kind'] == 'text':
        from models.text_encoder import get_text_encoder
        from train.captions import DEMO_PROMPTS
        prompts = text_prompts or DEMO_PROMPTS
        enc = get_text_encoder(condition['encoder'], condition['max_tokens']).encode(prompts)
        cond['text_embeds'] = enc[torch.arange(len(seeds)) % len(prompts)].to(device)

    def write(path):
        from models.generator import to_uint8_nhwc
        with torch.no_grad():
            images = to_uint8_nhwc(net_fn(noise, cond)).cpu().numpy()
        save_png(path, make_grid(images, columns=8))
    return write


def resumed_config(o):
    """The config.json a resumed run's last start wrote (what it trains with), or None: a fresh run, or none written."""
    config = Path(o['run_dir']) / 'config.json'
    return json.loads(config.read_text()) if o.get('resume') and config.is_file() else None


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + '\n')


def student_bundle_writer(trainer, spec, condition, name, provenance_fn, dtype='float32'):
    def write(path):
        g = OneStepGenerator(copy.deepcopy(trainer.G_ema).cpu().float(), init_sigma=trainer.cfg.init_sigma)
        save_bundle(path, g, name=name, architecture=spec, condition=condition, provenance=provenance_fn(), dtype=dtype)
    return write


def load_teacher_any(path, device):
    """(denoiser, spec, bundle condition or None)."""
    path = Path(path)
    if path.is_dir() and (path / 'sida.json').is_file():
        bundle = load_bundle(path, device=device)
        return bundle.generator.denoiser, bundle.config.architecture, bundle.config.condition
    denoiser, spec = load_teacher(path, device)
    return denoiser, spec, None


def teacher_weights_sha256(path):
    """The sha256 of a teacher's weights (a bundle's generator.safetensors, or the file itself), which a student's
    card keeps so that an evaluation can tell its own teacher from another; None for anything else (a preset)."""
    path = Path(path)
    if path.is_dir() and (path / 'sida.json').is_file():
        return read_config(path).sha256.get('generator.safetensors')
    return sha256_file(path) if path.is_file() else None


def teacher_spec(preset, resolution, channels, label_dim, text_dim, overrides):
    spec = PRESETS[preset](resolution=resolution, channels=channels, label_dim=label_dim,
                           **({'text_dim': text_dim} if text_dim else {}), **overrides)
    build_denoiser(spec)   # fail early on bad kwargs
    return spec



EXPORT_TARGETS = ('onnx', 'onnx-fp16', 'compile', 'triton-repo')


def parse_exports(text):
    targets = [t.strip() for t in text.split(',') if t.strip()]
    unknown = sorted(set(targets) - set(EXPORT_TARGETS))
    if unknown:
        raise ValueError(f'unknown --export target(s) {unknown}; choose from {", ".join(EXPORT_TARGETS)}')
    return targets


def export_after_training(bundle_dir, targets, log=print):
    """Train-then-export: the same exports (and parity gates) as `sida export`, on the final bundle."""
    from export.compiled import export_compiled
    from export.onnx_export import export_onnx
    from export.triton_repo import write_triton_repo
    for target in targets:
        if target in ('onnx', 'onnx-fp16'):
            entry = export_onnx(bundle_dir, 'fp16' if target == 'onnx-fp16' else 'fp32', log=log)
            log(f'exported {entry["file"]} (parity passed: {entry["parity"]["passed"]})')
        elif target == 'compile':
            entry = export_compiled(bundle_dir)
            log(f'torch.compile checked (parity passed: {entry["parity"]["passed"]})')
        elif target == 'triton-repo':
            model_dir = write_triton_repo(bundle_dir, Path(bundle_dir).parent / 'triton-repo', 'onnxruntime', log=log)
            log(f'wrote Triton repository {model_dir.parent}')


def export_targets(o):
    """The --export targets, checked before anything is loaded."""
    import click
    try:
        return parse_exports(o['exports'])
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--export') from None


def begin(o):
    """Shared start of every training command: the runtime (torchrun-aware) and a rank-0 log."""
    import click
    if o.get('text_embeddings'):
        from models.text_encoder import use_precomputed
        try:
            use_precomputed(o['text_embeddings'])
        except RuntimeError as e:
            raise click.BadParameter(str(e), param_hint='--text-embeddings') from None
    from sida.cli_options import resolve_device
    resolve_device(o['device'])          # --device cuda without CUDA: a usage error, not a traceback
    rt = setup_runtime(o['device'])
    log = (lambda msg: click.echo(msg, err=True)) if rt.rank == 0 else (lambda msg: None)
    configure_backends(o['tf32'])
    return rt, log


@dataclasses.dataclass
class Training:
    """What a command builds for `run_training`: a trainer and its run-specific parts."""
    trainer: object
    write_bundle: object                 # path -> None: the final (and checkpoint) bundle
    resolved: dict                       # config.json
    summary: str                         # the first log line
    make_samples: object = None          # path -> None: a sample grid
    metric: object = None                # () -> dict: a quality evaluation


def run_training(o, command, configure, build):
    """The sequence every `sida train` run shares:

    export targets checked -> configure() (usage checks, the typed settings) -> on --dry-run print them and
    stop, as edm's train.py does -> runtime -> build(cfg, rt) -> Training (data, networks, trainer) ->
    config.json -> train/runner.py (atomic checkpoints, --resume, SIGTERM) -> export on rank 0 -> finish.
    """
    import click
    targets = export_targets(o)
    cfg = configure()
    if o['dry_run']:
        options = {k: v for k, v in o.items() if k != 'dry_run'}
        click.echo(json.dumps({'command': command, command: dataclasses.asdict(cfg), 'run': dataclasses.asdict(run_config(o)),
                               'options': options}, indent=2, default=str))
        return
    rt, log = begin(o)
    compiled_before = compile_totals() if o.get('compile_') else None
    training = build(cfg, rt)
    if rt.rank == 0:
        write_json(o['run_dir'] / 'config.json', training.resolved)
        log(training.summary)
    runner.run(training.trainer, run_config(o), training.write_bundle, make_samples=training.make_samples,
               metric=training.metric, rank=rt.rank, log=log)
    if rt.rank == 0:
        log(f'done: {training.trainer.images_seen:,} images; bundle in {o["run_dir"] / "bundle"}')
        if compiled_before is not None:
            log(compile_report(compiled_before))
    finish(o, rt, targets, log)


def compile_totals():
    """This process's compile counters and seconds per phase so far (torch keeps them per process)."""
    from export.compile_cache import compile_seconds, counters
    return counters(), compile_seconds(top=None)


def compile_report(before):
    """One line on what compiling cost this run: graphs loaded from the persisted cache and compiled, and the timers
    that took the time (a cold machine compiles every graph; a warm one should load them)."""
    from export.compile_cache import compile_seconds, counters_since, describe
    counted, seconds = before
    top = sorted(((name, t - seconds.get(name, 0)) for name, t in compile_seconds(top=None).items()), key=lambda kv: -kv[1])[:3]
    timers = ', '.join(f'{name} {t:.1f} s' for name, t in top if t > 0)
    return f'compile: {describe(counters_since(counted))}; largest compile timers (nested, do not add up): {timers or "none"}'


def run_config(o):
    return runner.RunConfig(run_dir=str(o['run_dir']), total_images=o['total_images'], log_every_images=o['log_every'],
                     checkpoint_every_images=o['checkpoint_every'], sample_every_images=o['sample_every'],
                     keep_checkpoints=o['keep'], resume=o['resume'], metric_every_images=o.get('metric_every') or 0,
                     time_limit_s=o.get('time_limit') or 0)


def finish(o, rt, targets, log):
    """Shared end: train-then-export on rank 0, then leave the process group."""
    import click
    if rt.rank == 0 and targets and (o['run_dir'] / 'bundle').is_dir():
        try:
            export_after_training(o['run_dir'] / 'bundle', targets, log=log)
        except Exception as e:   # the trained bundle is safe on disk; say what failed and how to retry
            raise click.ClickException(f'training finished but export failed: {e} (retry with `sida export ... --bundle '
                                       f'{o["run_dir"] / "bundle"}`)') from None
    if rt.distributed:
        torch.distributed.destroy_process_group()
