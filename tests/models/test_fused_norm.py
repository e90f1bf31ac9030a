"""The fused GroupNorm + SiLU kernel (models/fused_norm.py, the compile switch fused-norm) against plain PyTorch.

On CPU machines the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, which must be set before triton is first
imported: a subprocess), on a GPU as compiled code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_ddpmpp

triton = pytest.importorskip('triton', reason='Triton is not installed (it comes with CUDA torch; `pip install triton` '
                                              'for the interpreter on a CPU)')

ROOT = Path(__file__).resolve().parents[2]

# (N, C, H, W, groups, pre, per-sample affine, dtype, mean offset): groups spanning several programs, several groups
# per program, channels per group not a power of two, a per-sample affine (UNetBlock's adaptive scale), bf16, and a
# large mean (where E[x^2] - mean^2 statistics lose their digits)
CASES = [(2, 64, 8, 8, 16, False, False, 'float32', 0), (3, 96, 5, 7, 32, True, False, 'float32', 0),
         (2, 40, 4, 4, 10, True, True, 'float32', 0), (1, 512, 4, 4, 32, False, True, 'float32', 0),
         (2, 64, 8, 8, 32, True, True, 'bfloat16', 0), (2, 64, 16, 16, 32, False, False, 'float32', 1000),
         (2, 48, 6, 6, 16, True, False, 'float32', -1),     # offset -1: an NCHW input (the kernel follows the strides)
         (2, 64, 10, 10, 32, False, True, 'float32', 0), (2, 16, 23, 23, 8, True, False, 'float32', 100)]   # short last blocks

SCRIPT = '''
import json, sys, torch
from models.fused_norm import _group_norm_silu_kernel, launch, reference
errors = []
device = 'cuda' if torch.cuda.is_available() else 'cpu'     # compiled on a GPU, the interpreter on a CPU
for n, c, h, w, g, with_pre, per_sample, dtype, offset in json.loads(sys.argv[1]):
    gen = torch.Generator().manual_seed(n * c + h)
    x = (torch.randn(n, c, h, w, generator=gen) + offset).to(getattr(torch, dtype))
    x = x.to(memory_format=torch.contiguous_format if offset < 0 else torch.channels_last)
    pre = torch.randn(n, c, generator=gen).to(x.dtype) if with_pre else None
    shape = (n, c) if per_sample else (c,)
    weight, bias = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    on = lambda t: None if t is None else t.to(device)
    y = launch(_group_norm_silu_kernel, on(x), on(pre), on(weight), on(bias), g, 1e-5).cpu()
    ref = reference(x, pre, weight, bias, g, 1e-5)
    ulp = ref.abs().max().item() * (2 ** -8 if dtype == 'bfloat16' else 2 ** -20)   # the output's rounding
    errors.append({'error': (y.double() - ref).abs().max().item(), 'ulp': ulp, 'dtype': str(y.dtype),
                   'same_layout': y.stride() == x.stride()})
print(json.dumps(errors))
'''


def test_the_kernel_computes_group_norm_then_silu():
    if torch.cuda.is_available():
        env = dict(os.environ)
    else:
        env = {**os.environ, 'TRITON_INTERPRET': '1'}
    out = subprocess.run([sys.executable, '-c', SCRIPT, json.dumps(CASES)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for case, r in zip(CASES, results):
        tolerance = 1e-3 if case[8] > 0 else max(2 * r['ulp'], 1e-4)    # a large mean: x itself is known to 6e-5
        assert r['error'] <= tolerance, (case, r)
        assert r['same_layout'] and r['dtype'] == f'torch.{case[7]}', (case, r)


def test_plan_takes_whole_groups_up_to_32_channels():
    from models.fused_norm import plan
    assert plan(256, 32) == (4, 32)         # DDPM++ at 32x32: 8 channels a group, 4 groups a program
    assert plan(512, 32) == (2, 32)
    assert plan(1280, 32) == (1, 40)        # SD's widest level: one group of 40 channels a program
    assert plan(96, 32) == (8, 24)          # groups of 3: the most that divide 32 and fit 32 channels


def test_the_kernel_is_used_from_the_batch_that_fills_the_gpu(monkeypatch):
    """Two waves of programs over the SMs (132 on an H100): DDPM++'s norms from batch 33 (8 programs a sample), and
    prepare_denoiser gives every GroupNorm its own threshold."""
    import models.fused_norm
    from export.compiled import CompileOptions, prepare_denoiser
    from models.architecture import build_denoiser
    from models.layers import GroupNorm
    monkeypatch.setattr(models.fused_norm, '_min_programs', lambda device: 264)
    assert models.fused_norm.min_batch(256, 32, 'cuda') == 33 and models.fused_norm.min_batch(320, 32, 'cuda') == 17
    denoiser = prepare_denoiser(build_denoiser(tiny_ddpmpp()), 'fp32', CompileOptions.parse('default+fused-norm'))
    norms = [m for m in denoiser.modules() if isinstance(m, GroupNorm)]
    assert norms and all(m.fused_silu_min_batch == models.fused_norm.min_batch(m.weight.shape[0], m.num_groups, 'cuda')
                         for m in norms)
    plain = prepare_denoiser(build_denoiser(tiny_ddpmpp()), 'fp32', CompileOptions.parse('default'))
    assert all(m.fused_silu_min_batch is None for m in plain.modules() if isinstance(m, GroupNorm))


def test_silu_of_without_fusion_is_the_blocks_old_arithmetic():
    """UNetBlock computes through GroupNorm.silu_of now; off the fused path it must be bit for bit what it was."""
    from torch.nn.functional import silu

    from models.layers import GroupNorm
    norm, x = GroupNorm(64), torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    pre, scale, shift = torch.randn(2, 64, 1, 1), torch.randn(2, 64, 1, 1), torch.randn(2, 64, 1, 1)
    assert torch.equal(norm.silu_of(x), silu(norm(x)))
    assert torch.equal(norm.silu_of(x, pre=pre), silu(norm(x + pre)))
    assert torch.equal(norm.silu_of(x, scale=scale + 1, shift=shift), silu(torch.addcmul(shift, norm(x), scale + 1)))


def test_fused_norm_is_refused_off_cuda_and_dropped_there():
    from export.compiled import CompileOptions, compile_generator
    from models.architecture import build_denoiser
    from models.generator import OneStepGenerator
    options = CompileOptions.parse('default+fused-norm+whole-graph')
    assert str(options) == 'default+fused-norm+whole-graph'
    assert not options.adapted('default', 'cpu').fused_norm and options.adapted('default', 'cuda').fused_norm
    generator = OneStepGenerator(build_denoiser(tiny_ddpmpp()), init_sigma=2.5)
    with pytest.raises(ValueError, match='fused-norm runs a Triton GPU kernel: it needs a CUDA device, not cpu'):
        compile_generator(generator, 'fp32', CompileOptions.parse('default+fused-norm'), 'cpu')
