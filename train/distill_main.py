"""`sida train distill`: assemble teacher, generator, fake score, data and runner; then run."""

import copy
import dataclasses
import time

import click
import torch

from models.bundle import BundleError, is_teacher, load_bundle
from sida.cli_options import SAVE_DTYPES
from train.batches import LabelBatches
from train.data import DataError
from train.distill import DistillConfig, Distiller
from train.launch import (
    Training,
    condition_of,
    load_data,
    load_teacher_any,
    make_batches,
    precision_dtype,
    prepare,
    resumed_config,
    run_config,
    run_training,
    sample_grid_writer,
    student_bundle_writer,
    teacher_weights_sha256,
)


def main(o):
    run_training(o, 'distill', lambda: configure(o), lambda cfg, rt: build(o, cfg, rt))


def configure(o):
    """Usage checks and the typed distill settings, from the options alone (what --dry-run prints)."""
    if o['method'] in ('sida', 'sid2a') and o['data'] is None:
        raise click.UsageError(f'--method {o["method"]} needs real images: give --data')
    if o['method'] == 'sid2a' and o['generator_init'] is None:
        raise click.UsageError('--method sid2a starts from a SiD generator: give --generator BUNDLE')
    cfg = DistillConfig(method=o['method'], alpha=o['alpha'], init_sigma=o['init_sigma'], tmax=o['tmax'], lr_g=o['lr_g'],
                        lr_psi=o['lr_psi'] or o['lr_g'], batch=o['batch'], batch_gpu=o['batch_gpu'],
                        loss_scale_g=o['loss_scale_g'], loss_scale_d=o['loss_scale_d'], loss_scale_g_gan=o['loss_scale_g_gan'],
                        g_warmup_images=o['g_warmup'], gan_start_images=o['gan_start'], ema_halflife_images=o['ema_halflife'],
                        total_images=o['total_images'], seed=o['seed'], augment=o['augment'], g_beta1=o['g_beta1'],
                        guidance=o['guidance'], adam_eps=1e-6 if o['precision'] == 'fp16' else 1e-8)
    return cfg


def check_guidance(cfg, spec, teacher):
    """--guidance > 1 needs a class- or text-conditioned teacher that also learned the unconditional score (label
    dropout); otherwise its "unconditional" prediction would be a guess and guiding away from it meaningless."""
    if cfg.guidance == 1:
        return
    kw = spec['network_kwargs']
    if not (kw.get('label_dim') or kw.get('text_dim')):
        raise click.ClickException(f'--guidance {cfg.guidance}: {teacher} is unconditional; guidance needs a class- or '
                                   'text-conditioned teacher')
    if not kw.get('label_dropout', 0):
        raise click.ClickException(f'--guidance {cfg.guidance}: {teacher} was trained without label dropout, so it has not '
                                   'learned the unconditional score; (re)train or warm-restart it with `sida train teacher '
                                   f'--label-dropout 0.1 --init-from {teacher}`')


def check_resume_guidance(o, cfg):
    """A resumed run is the checkpointed run: its guidance (config.json of its last start) cannot change midway."""
    resumed = resumed_config(o)
    if resumed is None:
        return
    recorded = resumed.get('distill', {}).get('guidance', 1.0)      # runs from before --guidance had none: 1
    if recorded != cfg.guidance:
        raise click.ClickException(f'--guidance {cfg.guidance}: the run being resumed trains with --guidance {recorded}; '
                                   'resume with the same value')


def start_generator_(o, cfg, generator, student, device):
    """--generator: load a one-step generator bundle (SiD2A's SiD generator, or a student to continue) into `generator`.
    Returns (what the card records of it, its condition), (None, None) without one. A resumed run keeps the start its
    first start recorded (the checkpoint holds the weights): the earlier run's images still count, and a --generator
    given again must be the same weights."""
    resumed = resumed_config(o)
    recorded = resumed.get('generator_init') if resumed else None
    if o['generator_init'] is None:
        return recorded, None
    path = o['generator_init']
    try:
        start = load_bundle(path, device=device)
    except BundleError as e:
        raise click.ClickException(str(e)) from None
    config = start.config
    if is_teacher(config):
        raise click.ClickException(f'--generator {path}: a teacher (a denoiser for the many-step sampler), not a one-step '
                                   'generator; the generator starts from the teacher without --generator')
    if student_spec(config.architecture) != student:
        raise click.ClickException(f'--generator {path}: its architecture differs from the teacher\'s')
    if config.init_sigma != cfg.init_sigma:
        raise click.ClickException(f'--generator {path}: it was trained at --init-sigma {config.init_sigma:g}, this run '
                                   f'uses {cfg.init_sigma:g}; give --init-sigma {config.init_sigma:g}')
    init = {'bundle': str(path.resolve()), 'weights_sha256': config.sha256.get('generator.safetensors'),
            'method': config.provenance.get('method'),
            'images_total': int(config.provenance.get('images_total', config.provenance.get('images_seen', 0)))}
    if resumed and 'generator_init' in resumed and (recorded or {}).get('weights_sha256') != init['weights_sha256']:
        started = f'{recorded["bundle"]}, sha256 {recorded["weights_sha256"][:12]}' if recorded else 'the teacher'
        raise click.ClickException(f'--generator {path}: the run being resumed started from other weights ({started}); '
                                   'resume without --generator or with that bundle')
    generator.load_state_dict(start.generator.denoiser.state_dict())
    return recorded or init, config.condition


def without_label_dropout_(net):
    """The generator and fake score start as copies of the teacher but must not inherit its label dropout: in training
    mode it would drop the generator's (and fake score's) labels. Returns net."""
    for module in net.modules():
        if hasattr(module, 'label_dropout'):
            module.label_dropout = 0
    return net


def student_spec(spec):
    """The student's architecture: the teacher's without label dropout (its default, 0), as the student trains."""
    spec = copy.deepcopy(spec)
    spec['network_kwargs'].pop('label_dropout', None)
    return spec


def build(o, cfg, rt):
    try:
        teacher_sha256 = teacher_weights_sha256(o['teacher'])      # read with the weights, for the student's card
        teacher, spec, bundle_condition = load_teacher_any(o['teacher'], rt.device)
    except (BundleError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(f'cannot load the teacher: {e}') from None
    if spec['network'] == 'UNet2DConditionModel':
        raise click.UsageError(f'{o["teacher"]} is a latent text-to-image model: distil it with `sida train lsg` '
                               '(which has its own --guidance)')
    check_guidance(cfg, spec, o['teacher'])
    check_resume_guidance(o, cfg)
    kw = spec['network_kwargs']
    shape = (kw['in_channels'], kw['img_resolution'], kw['img_resolution'])
    student = student_spec(spec)

    torch.manual_seed(o['seed'] + rt.rank)     # dropout streams differ per rank, as in the reference
    generator = without_label_dropout_(copy.deepcopy(teacher).requires_grad_(True))
    init, start_condition = start_generator_(o, cfg, generator, student, rt.device)
    fake_score = without_label_dropout_(copy.deepcopy(teacher).requires_grad_(True))

    dataset = None
    condition = None
    try:
        if o['data'] is not None:
            dataset, stream = load_data(o['data'], o['data_prefix'], kw['img_resolution'], kw['in_channels'], o['max_data'],
                                        rt, o['batch'], o['seed'], o['captions'])
        condition = condition_of(spec, bundle_condition, dataset.class_names if dataset is not None else None)
        if dataset is not None:
            batches = make_batches(dataset, stream, kw.get('label_dim', 0), condition, rt.device)
    except (DataError, ValueError, RuntimeError, ImportError) as e:    # bad data, captions or text-encoder setup
        raise click.ClickException(str(e)) from None
    if start_condition is not None and start_condition != condition:
        raise click.ClickException(f'--generator {o["generator_init"]}: another condition ({start_condition} there, '
                                   f'{condition} here)')
    if dataset is None:
        if condition['kind'] == 'text':
            raise click.UsageError('a text-conditioned teacher needs --data with captions (prompts to distil on)')
        batches = LabelBatches(kw.get('label_dim', 0), o['batch'], o['seed'], rt.rank, rt.world, rt.device)

    autocast = precision_dtype(o['precision'], rt.device)
    for net in (teacher, generator, fake_score):
        prepare(net, rt.device, o['channels_last'], o['compile_'])
    trainer = Distiller(cfg, teacher, generator, fake_score, batches, shape, device=rt.device, rank=rt.rank, world=rt.world,
                        autocast_dtype=autocast, ddp=rt.distributed)

    started = time.time()
    # cfg as the Distiller resolved it: --augment's default depends on the teacher's network.
    resolved = {'command': 'distill', 'distill': dataclasses.asdict(cfg), 'run': dataclasses.asdict(run_config(o)),
                'teacher': str(o['teacher']), 'architecture': spec, 'condition': condition, 'world_size': rt.world, 'ddp': rt.distributed,
                'per_gpu_batch': cfg.batch // rt.world, 'micro_batch': trainer.micro, 'device': rt.device, 'generator_init': init,
                'precision': str(autocast or 'fp32'), 'data': str(o['data']) if o['data'] else None,
                'data_prefix': o['data_prefix'], 'channels_last': o['channels_last'], 'compile': o['compile_']}
    summary = (f'distilling with {cfg.method} ({rt.world} process(es), per-GPU batch {cfg.batch // rt.world}, '
               f'{resolved["precision"]}) into {o["run_dir"]}')
    before = init['images_total'] if init else 0
    if init:
        summary += f', continuing {init["bundle"]} ({before:,} generator images before)'
    if cfg.augment and not trainer.augment_dim:
        summary += (f'; warning: --augment {cfg.augment} on networks without augment labels: the fake score cannot tell '
                    'augmented images from clean ones, so the augmentations can leak into the generator')

    def provenance():
        return {'method': cfg.method, 'teacher': str(o['teacher']), 'teacher_weights_sha256': teacher_sha256,
                'images_seen': trainer.images_seen, 'images_total': before + trainer.images_seen, 'generator_init': init,
                'hyperparameters': resolved['distill'], 'per_gpu_batch': resolved['per_gpu_batch'],
                'precision': resolved['precision'], 'world_size': rt.world, 'wall_seconds': round(time.time() - started)}

    metric = make_metric(o, trainer, dataset, stream if dataset is not None else None, condition, shape, rt) if rt.rank == 0 else None
    name = f'{o["run_dir"].name}-{cfg.method}'
    samples = sample_grid_writer(lambda z, c: trainer.generate(trainer.G_ema, z, c), condition, shape, rt.device)
    write_bundle = student_bundle_writer(trainer, student, condition, name, provenance, SAVE_DTYPES[o['save_dtype']])
    return Training(trainer, write_bundle, resolved, summary, make_samples=samples, metric=metric)


def make_metric(o, trainer, dataset, stream, condition, shape, rt):
    """Frechet distance (+ precision/recall) of G_ema samples against the training data, in the chosen space."""
    if not o['metric_features'] or not o['metric_every']:
        return None
    if dataset is None:
        raise click.UsageError('--metric-features compares with real images: give --data')
    from models.generator import to_uint8_nhwc
    from models.seeds import noise_for_seeds
    from train.metrics import DataReference, FIDUnavailable, load_features
    try:
        features = load_features(o['metric_features'], rt.device)
    except (FileNotFoundError, ValueError, FIDUnavailable) as e:
        raise click.ClickException(str(e)) from None
    real = stream.images if stream.images is not None else dataset.load_all()
    key = f'{dataset.path}|{o["data_prefix"]}|{len(dataset)}|{dataset.resolution}|{o["max_data"]}'
    reference = DataReference(features, real, key, cache_dir=o['run_dir'] / 'stats-cache')
    n = o['metric_samples']
    noise = noise_for_seeds(range(10**6, 10**6 + n), shape)
    g = torch.Generator().manual_seed(0)
    index = torch.randint(len(dataset), (n,), generator=g)      # what the samples are asked for: random training examples'
    labels = torch.as_tensor(dataset.labels)[index] if condition['kind'] == 'class' else None
    captions = trainer.batches.text_table if condition['kind'] == 'text' else None        # ... labels, or captions
    name = features.kind

    def metric():
        images = []
        with torch.no_grad():
            for i in range(0, n, 500):
                cond = {}
                if labels is not None:
                    cond['class_labels'] = torch.nn.functional.one_hot(labels[i:i + 500], len(condition['labels'])).float().to(rt.device)
                if captions is not None:
                    cond['text_embeds'] = captions.lookup(index[i:i + 500]).to(rt.device)
                x = trainer.generate(trainer.G_ema, noise[i:i + 500].to(rt.device), cond)
                images.append(to_uint8_nhwc(x).permute(0, 3, 1, 2).cpu())
        return reference.compare(torch.cat(images), name)
    return metric
