"""`sida train lsg`: SiD-LSG from a local diffusers teacher into a latent one-step bundle (VAE and CLIP inside)."""

import copy
import dataclasses
import json
import time
from pathlib import Path

import click
import torch

from models.bundle import save_bundle
from models.diffusers_teacher import is_diffusers_dir, load_unet_denoiser, load_vae
from models.generator import OneStepGenerator, VaeDecoder
from models.text_encoder import ClipTextEncoder
from sida.cli_options import SAVE_DTYPES, torch_dtype
from train.batches import PromptBatches
from train.launch import Training, precision_dtype, prepare, run_config, run_training, sample_grid_writer, uses_cuda_graphs
from train.sid_lsg import LSGConfig, LSGDistiller


def read_prompts(path):
    """A text file with one prompt per line, or a JSON list of strings; blank lines are skipped."""
    text = Path(path).read_text()
    if Path(path).suffix == '.json':
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}: not valid JSON ({e})') from None
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f'{path}: expected a JSON list of prompt strings')
    else:
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f'{path}: no prompts in it')
    return prompts


def main(o):
    run_training(o, 'lsg', lambda: configure(o), lambda cfg, rt: build(o, cfg, rt))


def configure(o):
    """Usage checks and the typed lsg settings, from the options alone (what --dry-run prints)."""
    if o['offload_teacher'] and uses_cuda_graphs(o['compile_']):
        # CUDA graphs hold parameter addresses; an offloaded teacher moves its weights every iteration.
        raise click.UsageError(f'--offload-teacher cannot be combined with --compile {o["compile_"]} (CUDA graphs): '
                               'drop one, or use --compile default')
    if o['precision'] == 'fp16':
        raise click.UsageError('--precision fp16 is not supported for sid-lsg (the reference needs loss scaling and G gradient '
                               'clipping for it and reports worse results): use bf16 or fp32')
    cfg = LSGConfig(guidance=o['guidance'], guidance_fake_train=o['guidance_fake_train'], guidance_fake_eval=o['guidance_fake_eval'],
                    guidance_real_eval=o['guidance_real_eval'], t_init=o['t_init'], tmin=o['tmin'], tmax=o['tmax'],
                    alpha=o['alpha'], lr_g=o['lr_g'], lr_psi=o['lr_psi'] or o['lr_g'], batch=o['batch'], batch_gpu=o['batch_gpu'],
                    empty_prompt_prob=o['empty_prompts'], ema_halflife_images=o['ema_halflife'], total_images=o['total_images'],
                    seed=o['seed'], adam_eps=1e-6 if o['precision'] == 'fp16' else 1e-8)
    return cfg


def build(o, cfg, rt):
    teacher_dir = Path(o['teacher']).resolve()
    if not is_diffusers_dir(teacher_dir):
        raise click.UsageError(f'--teacher {o["teacher"]}: not a diffusers directory (needs unet/config.json and scheduler/)')
    try:
        prompts = read_prompts(o['prompts'])
        teacher, spec = load_unet_denoiser(teacher_dir, rt.device)
        vae = load_vae(teacher_dir)
        encoder = ClipTextEncoder(teacher_dir, rt.device)
    except (ValueError, RuntimeError, ImportError) as e:
        raise click.ClickException(f'cannot load the teacher: {e}') from None
    unet = spec['network_kwargs']
    shape = (unet['in_channels'], unet['sample_size'], unet['sample_size'])

    torch.manual_seed(o['seed'] + rt.rank)
    generator = copy.deepcopy(teacher).requires_grad_(True)       # both start from the teacher's full-precision weights
    fake_score = copy.deepcopy(teacher).requires_grad_(True)
    if o['teacher_dtype'] != 'fp32':                              # only the frozen copy is stored in half precision
        teacher.model.to(torch_dtype(o['teacher_dtype']))
        teacher.compute_dtype = torch_dtype(o['teacher_dtype'])
    if o['grad_checkpointing']:
        generator.model.enable_gradient_checkpointing()
        fake_score.model.enable_gradient_checkpointing()
    batches = PromptBatches(prompts, encoder, o['batch'], o['seed'], rt.rank, rt.world, rt.device)
    for net in (teacher, generator, fake_score):
        prepare(net, rt.device, o['channels_last'], o['compile_'])
    try:
        trainer = LSGDistiller(cfg, teacher, generator, fake_score, batches, shape, encoder.encode(['']),
                               offload_teacher=o['offload_teacher'], device=rt.device, rank=rt.rank, world=rt.world,
                               autocast_dtype=precision_dtype(o['precision'], rt.device), ddp=rt.distributed)
    except ValueError as e:
        raise click.ClickException(str(e)) from None

    condition = {'kind': 'text', 'encoder': 'clip:.', 'dim': encoder.dim, 'max_tokens': encoder.max_tokens}
    started = time.time()
    resolved = {'command': 'lsg', 'lsg': dataclasses.asdict(cfg), 'run': dataclasses.asdict(run_config(o)), 'teacher': str(teacher_dir),
                'prompts': str(o['prompts']), 'num_prompts': len(prompts), 'architecture': spec, 'condition': condition,
                'world_size': rt.world, 'ddp': rt.distributed, 'per_gpu_batch': cfg.batch // rt.world,
                'micro_batch': trainer.micro, 'device': rt.device,
                'precision': str(trainer.autocast_dtype or 'fp32'), 'teacher_dtype': o['teacher_dtype'],
                'grad_checkpointing': o['grad_checkpointing'], 'offload_teacher': o['offload_teacher'], 'compile': o['compile_']}
    summary = (f'distilling with sid-lsg (guidance {cfg.guidance_fake_train}/{cfg.guidance_fake_eval}/{cfg.guidance_real_eval}, '
               f'{rt.world} process(es), per-GPU batch {cfg.batch // rt.world}, {len(prompts):,} prompts) into {o["run_dir"]}')

    def write_bundle(path):
        g = OneStepGenerator(copy.deepcopy(trainer.G_ema).cpu().float(), init_sigma=cfg.init_sigma)
        provenance = {'method': 'sid-lsg', 'teacher': str(teacher_dir), 'images_seen': trainer.images_seen,
                      'hyperparameters': resolved['lsg'], 'per_gpu_batch': resolved['per_gpu_batch'],
                      'precision': resolved['precision'], 'world_size': rt.world, 'wall_seconds': round(time.time() - started)}
        save_bundle(path, g, name=f'{o["run_dir"].name}-sid-lsg', architecture=spec, condition=condition, provenance=provenance,
                    dtype=SAVE_DTYPES[o['save_dtype']], vae=vae, text_encoder_from=teacher_dir)

    decoder = VaeDecoder(copy.deepcopy(vae).to(rt.device), vae.config.scaling_factor, vae.config.get('shift_factor'))
    samples = sample_grid_writer(lambda z, c: decoder(trainer.generate(trainer.G_ema, z, c)).clamp(-1, 1),
                                 {'kind': 'text', 'encoder': f'clip:{teacher_dir}', 'max_tokens': encoder.max_tokens},
                                 shape, rt.device, seeds=range(16), text_prompts=prompts[:4])
    return Training(trainer, write_bundle, resolved, summary, make_samples=samples if rt.rank == 0 else None)
