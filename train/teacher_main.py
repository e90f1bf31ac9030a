"""`sida train teacher`: an EDM teacher trained with denoising score matching on the user's images."""

import copy
import dataclasses
import json
import time
from pathlib import Path

import click
import torch

from models.architecture import build_denoiser
from models.bundle import BundleError, is_teacher, load_bundle, read_config, save_bundle
from models.generator import OneStepGenerator
from models.heun_sampler import edm_sample
from sida.cli_options import SAVE_DTYPES
from train.data import DataError
from train.launch import (
    Training,
    load_data,
    make_batches,
    precision_dtype,
    prepare,
    resumed_config,
    run_config,
    run_training,
    sample_grid_writer,
    teacher_spec,
)
from train.score_matching import TeacherConfig, TeacherTrainer


def main(o):
    run_training(o, 'teacher', lambda: configure(o), lambda cfg, rt: build(o, cfg, rt))


def configure(o):
    """Usage checks and the typed teacher settings, from the options alone (what --dry-run prints)."""
    if o['data'] is None:
        raise click.UsageError('a teacher learns from images: give --data')
    if o['label_dropout'] and o['cond'] == 'none':
        raise click.UsageError('--label-dropout drops the condition: a --cond none teacher has none')
    # A warm restart's EMA starts from trained weights: no EMA ramp-up (it would follow the fresh optimiser's first steps).
    warm = bool(o.get('init_from') or recorded_warm_start(o))
    cfg = TeacherConfig(lr=o['lr'], lr_rampup_images=o['lr_rampup'], batch=o['batch'], batch_gpu=o['batch_gpu'],
                        ema_halflife_images=o['ema_halflife'], ema_rampup=None if warm else 0.05,
                        xflip=o['xflip'], total_images=o['total_images'], seed=o['seed'])
    return cfg


# Training-time settings a warm restart may change: no weight depends on them (label dropout: what makes a teacher
# guidable, added to one trained without it).
WARM_START_MAY_CHANGE = ('network_kwargs.label_dropout',)


def _flat(spec, prefix=''):
    """{'network_kwargs.model_channels': 128, ...}: an architecture's settings by dotted name."""
    flat = {}
    for k, v in spec.items():
        flat.update(_flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
    return flat


def recorded_warm_start(o):
    """A resumed run's --init-from record, from the config.json its first start wrote (the bundle it named may have
    changed since, e.g. continued in place): None for a fresh run or one that was no warm restart."""
    return (resumed_config(o) or {}).get('init_from')


def recorded_label_dropout(architecture):
    return architecture['network_kwargs'].get('label_dropout', 0)       # absent: trained without


def label_dropout_of(o, source):
    """--label-dropout as given, else inherited: a resumed run keeps its own (config.json), a warm restart its bundle's,
    so a guidable teacher stays guidable when continued; a fresh teacher has none. A resume cannot change it."""
    given, resumed = o['label_dropout'], resumed_config(o)
    if resumed is not None:
        recorded = recorded_label_dropout(resumed['architecture'])
        if given is not None and given != recorded:
            raise click.ClickException(f'--label-dropout {given}: the run being resumed trains with {recorded}; resume '
                                       'without the option (or with the same value), or start a warm restart instead')
        return recorded
    if given is not None or not source:
        return given or 0
    try:
        return recorded_label_dropout(read_config(source).architecture)
    except BundleError as e:
        raise click.ClickException(f'--init-from: {e}') from None


def warm_start(path, spec, condition):
    """The teacher bundle at `path` checked against this run's architecture and condition: (its denoiser's state dict,
    what the new bundle records of it). Anything that differs is a one-line error naming it."""
    try:
        bundle = load_bundle(path)
    except BundleError as e:
        raise click.ClickException(f'--init-from: {e}') from None
    config = bundle.config
    if config.latent or not is_teacher(config):
        raise click.ClickException(f'--init-from {path}: not a teacher bundle of `sida train teacher` '
                                   f'(its method is {config.provenance.get("method")!r})')
    theirs, ours = _flat(config.architecture), _flat(json.loads(json.dumps(spec)))    # as the bundle stores it
    differ = [f'{k} {ours.get(k)!r} here, {theirs.get(k)!r} there' for k in sorted(set(theirs) | set(ours))
              if theirs.get(k) != ours.get(k) and k not in WARM_START_MAY_CHANGE]
    if differ:
        raise click.ClickException(f'--init-from {path}: another architecture ({"; ".join(differ)}); give the options it '
                                   'was trained with')
    if config.condition != condition:
        raise click.ClickException(f'--init-from {path}: another condition ({config.condition} there, {condition} here)')
    before = int(config.provenance.get('images_total', config.provenance.get('images_seen', 0)))
    record = {'bundle': str(Path(path).resolve()), 'weights_sha256': config.sha256.get('generator.safetensors'),
              'images_total': before}
    return bundle.generator.denoiser.state_dict(), record


def build(o, cfg, rt):
    channels = int(o['img_channels'])
    try:
        dataset, stream = load_data(o['data'], o['data_prefix'], o['resolution'], channels, o['max_data'], rt, o['batch'], o['seed'],
                                    o['captions'])
    except DataError as e:
        raise click.ClickException(str(e)) from None
    resolution = o['resolution'] or int(dataset.image(0).shape[-1])
    if o['cond'] == 'class' and dataset.label_dim == 0:
        raise click.UsageError(f'{o["data"]}: no labels found (need <class>/<file> folders or dataset.json); use --cond none')
    label_dim = dataset.label_dim if o['cond'] == 'class' else 0
    text_dim = 0
    if o['cond'] == 'text':
        from models.text_encoder import DEFAULT_ENCODER, get_text_encoder, precomputed_table
        table = precomputed_table()
        max_tokens = o['max_tokens'] or (table.max_tokens if table is not None else 32)
        try:
            text_dim = get_text_encoder(DEFAULT_ENCODER, max_tokens).dim
        except (RuntimeError, ImportError) as e:
            raise click.ClickException(str(e)) from None
        condition = {'kind': 'text', 'encoder': DEFAULT_ENCODER, 'dim': text_dim, 'max_tokens': max_tokens}
    elif label_dim:
        condition = {'kind': 'class', 'labels': list(dataset.class_names)}
    else:
        condition = {'kind': 'none'}
    # A warm restart starts from a bundle's weights: --init-from, or on a resume the one its first start recorded (the
    # checkpoint then holds the weights; they are loaded too for a run stopped before its first checkpoint).
    init = recorded_warm_start(o)
    given = o.get('init_from')
    source = given or (init['bundle'] if init and Path(init['bundle']).is_dir() else None)
    overrides = dict(model_channels=o['model_channels'], channel_mult=[int(x) for x in o['channel_mult'].split(',')],
                     num_blocks=o['num_blocks'], attn_resolutions=[int(x) for x in o['attn'].split(',') if x], dropout=o['dropout'],
                     label_dropout=label_dropout_of(o, source))
    if o['preset'] != 'adm':
        overrides['augment_dim'] = 0
    try:
        spec = teacher_spec(o['preset'], resolution, channels, label_dim, text_dim, overrides)
    except (TypeError, ValueError) as e:
        raise click.ClickException(f'bad architecture: {e}') from None
    try:
        batches = make_batches(dataset, stream, label_dim, condition, rt.device)
    except (ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None

    torch.manual_seed(o['seed'])
    net = build_denoiser(spec)
    if given and Path(given).resolve().is_relative_to(Path(o['run_dir']).resolve()):
        raise click.ClickException(f'--init-from {given} is inside --out {o["run_dir"]}: this run\'s bundle would replace '
                                   'it; give another --out')
    if source:
        weights, fresh = warm_start(source, spec, condition)
        if init is not None and init['weights_sha256'] != fresh['weights_sha256']:
            if given:
                raise click.ClickException(f'--init-from {given}: this run started from other weights ({init["bundle"]}, '
                                           f'sha256 {init["weights_sha256"][:12]}); resume without --init-from')
            weights = None                # the recorded start was replaced since: the checkpoint holds the weights
        init = init or fresh
        if weights is not None:
            net.load_state_dict(weights, strict=True)
    net = prepare(net, rt.device, o['channels_last'], o['compile_'])
    trainer = TeacherTrainer(cfg, net, batches, device=rt.device, rank=rt.rank, world=rt.world,
                             autocast_dtype=precision_dtype(o['precision'], rt.device), ddp=rt.distributed)
    started = time.time()
    resolved = {'command': 'teacher', 'teacher': dataclasses.asdict(cfg), 'run': dataclasses.asdict(run_config(o)),
                'architecture': spec, 'condition': condition, 'data': str(o['data']), 'data_prefix': o['data_prefix'],
                'data_size': len(dataset), 'world_size': rt.world, 'device': rt.device, 'precision': o['precision'],
                'init_from': init, 'channels_last': o['channels_last'], 'compile': o['compile_']}
    before = init['images_total'] if init else 0
    n_params = sum(p.numel() for p in net.parameters())
    summary = f'training a {o["preset"]} teacher ({n_params / 1e6:.1f}M parameters) on {len(dataset):,} images into {o["run_dir"]}'
    if init:
        summary += f', continuing {init["bundle"]} ({init["images_total"]:,} images seen before)'

    def write_bundle(path):
        net_ema = copy.deepcopy(trainer.ema).cpu().float()
        save_bundle(path, OneStepGenerator(net_ema), name=f'{o["run_dir"].name}-teacher', architecture=spec, condition=condition,
                    dtype=SAVE_DTYPES[o['save_dtype']],
                    provenance={'method': 'edm-teacher', 'images_seen': trainer.images_seen,
                                'images_total': before + trainer.images_seen, 'init_from': init, 'data': str(o['data']),
                                'hyperparameters': resolved['teacher'], 'wall_seconds': round(time.time() - started),
                                'note': 'a denoiser: sample it with the EDM Heun sampler, or distil it with sida train distill'})

    shape = (channels, resolution, resolution)
    samples = sample_grid_writer(lambda z, c: edm_sample(trainer.ema, z, num_steps=18, **c), condition, shape, rt.device)
    return Training(trainer, write_bundle, resolved, summary, make_samples=samples)
