"""`sida train teacher`: an EDM teacher trained with denoising score matching on the user's images."""

import copy
import dataclasses
import time

import click
import torch

from models.architecture import build_denoiser
from models.bundle import save_bundle
from models.generator import OneStepGenerator
from models.heun_sampler import edm_sample
from train.data import DataError
from train.launch import (
    SAVE_DTYPES,
    Training,
    load_data,
    make_batches,
    precision_dtype,
    prepare,
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
    cfg = TeacherConfig(lr=o['lr'], lr_rampup_images=o['lr_rampup'], batch=o['batch'], batch_gpu=o['batch_gpu'],
                        ema_halflife_images=o['ema_halflife'], xflip=o['xflip'], total_images=o['total_images'], seed=o['seed'])
    return cfg


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
    overrides = dict(model_channels=o['model_channels'], channel_mult=[int(x) for x in o['channel_mult'].split(',')],
                     num_blocks=o['num_blocks'], attn_resolutions=[int(x) for x in o['attn'].split(',') if x], dropout=o['dropout'])
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
    net = prepare(build_denoiser(spec), rt.device, o['channels_last'], o['compile_'])
    trainer = TeacherTrainer(cfg, net, batches, device=rt.device, rank=rt.rank, world=rt.world,
                             autocast_dtype=precision_dtype(o['precision'], rt.device), ddp=rt.distributed)
    started = time.time()
    resolved = {'command': 'teacher', 'teacher': dataclasses.asdict(cfg), 'run': dataclasses.asdict(run_config(o)),
                'architecture': spec, 'condition': condition, 'data': str(o['data']), 'data_prefix': o['data_prefix'],
                'data_size': len(dataset), 'world_size': rt.world, 'device': rt.device, 'precision': o['precision']}
    n_params = sum(p.numel() for p in net.parameters())
    summary = f'training a {o["preset"]} teacher ({n_params / 1e6:.1f}M parameters) on {len(dataset):,} images into {o["run_dir"]}'

    def write_bundle(path):
        net_ema = copy.deepcopy(trainer.ema).cpu().float()
        save_bundle(path, OneStepGenerator(net_ema), name=f'{o["run_dir"].name}-teacher', architecture=spec, condition=condition,
                    dtype=SAVE_DTYPES[o['save_dtype']],
                    provenance={'method': 'edm-teacher', 'images_seen': trainer.images_seen, 'data': str(o['data']),
                                'hyperparameters': resolved['teacher'], 'wall_seconds': round(time.time() - started),
                                'note': 'a denoiser: sample it with the EDM Heun sampler, or distil it with sida train distill'})

    shape = (channels, resolution, resolution)
    samples = sample_grid_writer(lambda z, c: edm_sample(trainer.ema, z, num_steps=18, **c), condition, shape, rt.device)
    return Training(trainer, write_bundle, resolved, summary, make_samples=samples)
