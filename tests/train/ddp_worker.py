"""Run by tests/train/test_ddp.py in 2 spawned processes (gloo on CPU)."""

import copy
import json
import os

import torch

from models.architecture import build_denoiser
from tests.conftest import perturb_, tiny_ddpmpp
from train.batches import ImageBatches
from train.data import DataStream, ImageDataset
from train.distill import DistillConfig, Distiller
from train.launch import setup_runtime

BATCH = 8


def build_lsg(sd_dir, rank, world, ddp):
    """SiD-LSG on the tiny diffusers pipeline at sd_dir, guidance 2 (so Guided wraps the DDP fake score)."""
    from models.diffusers_teacher import load_unet_denoiser
    from models.text_encoder import ClipTextEncoder
    from train.batches import PromptBatches
    from train.sid_lsg import LSGConfig, LSGDistiller
    torch.manual_seed(0)
    teacher, _ = load_unet_denoiser(sd_dir)
    perturb_(teacher, scale=0.02).eval().requires_grad_(False)
    encoder = ClipTextEncoder(sd_dir)
    cfg = LSGConfig(guidance=2.0, batch=BATCH, lr_g=1e-4, lr_psi=1e-4)
    batches = PromptBatches(['a red car', 'a ship at sea', 'a bird', 'a cat on a sofa'], encoder, BATCH, 0, rank, world, 'cpu')
    return LSGDistiller(cfg, teacher, copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher).requires_grad_(True),
                        batches, (4, 8, 8), encoder.encode(['']), rank=rank, world=world, ddp=ddp)


def build(data_dir, method, rank, world, ddp):
    if method == 'sid-lsg':
        return build_lsg(data_dir, rank, world, ddp)
    torch.manual_seed(0)
    teacher = perturb_(build_denoiser(tiny_ddpmpp(dropout=0.0)), scale=0.02).eval()
    cfg = DistillConfig(method=method, batch=BATCH, lr_g=1e-4, lr_psi=1e-4, g_warmup_images=0, gan_start_images=0)
    batches = ImageBatches(DataStream(ImageDataset(data_dir, resolution=16), BATCH, rank=rank, world=world), 'cpu', label_dim=10)
    return Distiller(cfg, teacher, copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher).requires_grad_(True),
                     batches, (3, 16, 16), rank=rank, world=world, ddp=ddp)


def grads(d):
    """The last step's gradients of G and f_psi (kept until the next zero_grad)."""
    out = {}
    for prefix, module in (('G.', d.G), ('fake.', d.fake)):
        for name, p in module.named_parameters():
            if p.grad is not None:
                out[prefix + name] = p.grad.detach().clone()
    return out


def worker(rank, world, port, data_dir, out_dir, method, iterations):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    rt = setup_runtime('cpu')
    d = build(data_dir, method, rt.rank, rt.world, ddp=True)
    stats = [d.iteration() for _ in range(iterations)]
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in d.G.state_dict().items()}, f'{out_dir}/G_rank{rank}.safetensors')
    save_file(grads(d), f'{out_dir}/grads_rank{rank}.safetensors')
    with open(f'{out_dir}/stats_rank{rank}.json', 'w') as f:
        json.dump(stats, f)
    torch.distributed.destroy_process_group()


def mean_worker(rank, world, port, out_dir):
    """Each rank logs its own statistics; mean_over_ranks gives every rank the same global means."""
    from train.runner import mean_over_ranks
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world)
    try:
        means = mean_over_ranks({'loss_g': float(rank), 'loss_psi': torch.tensor(2.0 + rank)})
        with open(os.path.join(out_dir, f'means_rank{rank}.json'), 'w') as f:
            json.dump(means, f)
    finally:
        torch.distributed.destroy_process_group()
