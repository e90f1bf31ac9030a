"""GroupNorm + SiLU over channels-last activations as one Triton kernel: the [speed] switch `fused-norm`.

Under inductor a GroupNorm followed by SiLU is two kernels, a reduction for the statistics and a pointwise pass that
reads the activations again, from HBM: at batch 256 DDPM++'s 32x32 activations are 134 MB, long out of the 50 MB L2
by the time the second kernel runs. These kernels were half of a batch-256 forward on the H100 (12.4 of 27.9 ms,
2026-12-07), the convolutions the other half. Here one program takes one sample's block of groups: it reads that
slice once for the statistics (Welford, float32) and at once again, now from the L2, to normalise, apply the
per-(sample, channel) affine and SiLU, and write. HBM traffic: one read and one write, against two reads and a write.

One program per (sample, block of groups) and no split of the pixels, so it pays only when there are enough of them
to fill the GPU: `min_batch` says from which batch; below it, callers keep the plain path.
"""

import functools
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'       # Triton's interpreter (the CPU tests)
INTERPRETED_TILE = {'BLOCK_HW': 32, 'num_warps': 4}

# 64 contiguous bytes of each bf16 pixel (whole 32-byte sectors), and a slice small enough that the programs resident
# at once (3 an SM at 74-80 registers a thread: ptxas for sm_90a) keep theirs in the L2 for the second pass: 64 KB at
# 32x32, 25 MB for 396 programs against the H100's 50 MB (64 channels would have filled it)
MAX_CHANNELS_PER_PROGRAM = 32


def _tuned(kernel):
    """Tile height and warps by measurement, per shape, at the first launch (before any CUDA-graph capture). The first
    version, 128 pixels x 32 channels on 8 warps, took 128 registers a thread at 25% occupancy and ran at 1.3-1.4
    TB/s: 14% slower than inductor's two kernels at batch 256 (H100, 2026-12-07). Triton's interpreter (CPU tests)
    cannot time anything: there one fixed tile (INTERPRETED_TILE)."""
    if INTERPRETED:
        return kernel
    return triton.autotune(configs=[triton.Config({'BLOCK_HW': hw}, num_warps=warps) for hw in (16, 32, 64, 128)
                                    for warps in (2, 4, 8)], key=['HW', 'CH', 'HAS_PRE'])(kernel)


@_tuned
@triton.jit
def _group_norm_silu_kernel(x_ptr, pre_ptr, w_ptr, b_ptr, y_ptr, HW, CPG, CH, sx_n, sx_c, sx_hw, sy_n, sy_c, sy_hw,
                            stride_pre, stride_w, stride_b, eps, HAS_PRE: tl.constexpr, SILU: tl.constexpr,
                            BLOCK_C: tl.constexpr, GROUPS: tl.constexpr, BLOCK_HW: tl.constexpr):
    n = tl.program_id(0)
    lane = tl.arange(0, BLOCK_C)
    channels = tl.program_id(1) * CH + lane
    cmask = lane < CH
    x_base = x_ptr + n.to(tl.int64) * sx_n + channels[None, :] * sx_c       # strides: any dense layout reads right,
    y_base = y_ptr + n.to(tl.int64) * sy_n + channels[None, :] * sy_c       # channels-last reads whole sectors
    pre = tl.zeros([BLOCK_C], tl.float32)
    if HAS_PRE:
        pre = tl.load(pre_ptr + n * stride_pre + channels, mask=cmask, other=0.0).to(tl.float32)

    # Pass 1: per-channel mean and M2 over the pixels, block by block (Chan's parallel Welford update).
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        mask = (hw < HW)[:, None] & cmask[None, :]
        v = tl.load(x_base + hw[:, None] * sx_hw, mask=mask, other=0.0,
                    eviction_policy='evict_last').to(tl.float32) + pre[None, :]
        seen = start * 1.0
        count = tl.minimum(HW - start, BLOCK_HW).to(tl.float32)
        block_mean = tl.sum(tl.where(mask, v, 0.0), 0) / count
        d = tl.where(mask, v - block_mean[None, :], 0.0)
        delta = block_mean - mean
        total = seen + count
        mean += delta * (count / total)
        m2 += tl.sum(d * d, 0) + delta * delta * (seen * count / total)

    # Channels to groups and back: a [GROUPS, BLOCK_C] membership mask (CPG need not be a power of two).
    member = ((lane // CPG)[None, :] == tl.arange(0, GROUPS)[:, None]) & cmask[None, :]
    group_mean = tl.sum(tl.where(member, mean[None, :], 0.0), 1) / CPG
    spread = mean[None, :] - group_mean[:, None]
    group_m2 = tl.sum(tl.where(member, m2[None, :] + HW * spread * spread, 0.0), 1)
    group_rstd = 1.0 / tl.sqrt(group_m2 / (HW * CPG) + eps)
    c_mean = tl.sum(tl.where(member, group_mean[:, None], 0.0), 0)
    c_rstd = tl.sum(tl.where(member, group_rstd[:, None], 0.0), 0)

    w = tl.load(w_ptr + n * stride_w + channels, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + n * stride_b + channels, mask=cmask, other=0.0).to(tl.float32)
    scale = c_rstd * w
    shift = b + (pre - c_mean) * scale           # (x + pre - mean) * rstd * w + b = x * scale + shift

    # Pass 2: the same slice again (from the L2), normalised, SiLU, written in x's dtype.
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        mask = (hw < HW)[:, None] & cmask[None, :]
        v = tl.load(x_base + hw[:, None] * sx_hw, mask=mask, other=0.0, eviction_policy='evict_first').to(tl.float32)
        y = v * scale[None, :] + shift[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_base + hw[:, None] * sy_hw, y.to(y_ptr.dtype.element_ty), mask=mask)


def plan(channels, num_groups):
    """(groups per program, channels per program): the most groups whose channels fit MAX_CHANNELS_PER_PROGRAM, and
    that divide the groups evenly (each program a whole number of groups)."""
    per_group = channels // num_groups
    groups = max((g for g in range(1, num_groups + 1) if num_groups % g == 0
                  and g * per_group <= max(per_group, MAX_CHANNELS_PER_PROGRAM)), default=1)
    return groups, groups * per_group


@functools.cache
def _min_programs(device_index):
    return 2 * torch.cuda.get_device_properties(device_index).multi_processor_count


def min_batch(channels, num_groups, device):
    """The smallest batch with enough programs (samples x blocks of groups) for two waves over the GPU's SMs: the
    kernel pays at a batch-256 forward, not at batch 1. Worked out before tracing (plain numbers for dynamo)."""
    device = torch.device(device)
    return -(-_min_programs(device.index or 0) // (channels // plan(channels, num_groups)[1]))


def launch(kernel, x, pre, weight, bias, num_groups, eps, silu=True):
    """y = silu(group_norm(x + pre) * weight + bias) with `kernel` (the jitted one, or its wrap_triton for compile).
    x: [N, C, H, W], channels-last for speed (any layout whose H and W flatten reads right); pre: [N, C] or None;
    weight, bias: [C] or [N, C] (a per-sample affine). y has x's layout."""
    n, c, h, w = x.shape
    if c % num_groups:
        raise ValueError(f'GroupNorm: {c} channels do not split into {num_groups} groups')
    pre, weight, bias = (t if t is None or t.stride(-1) == 1 else t.contiguous() for t in (pre, weight, bias))
    if x.stride(2) != w * x.stride(3):      # pixels not one stride apart
        x = x.contiguous(memory_format=torch.channels_last)
    groups, per_program = plan(c, num_groups)
    y = torch.empty_like(x)
    stride = lambda t: t.stride(0) if t.dim() == 2 else 0      # noqa: E731  ([C]: the same row for every sample)
    kernel[(n, c // per_program)](
        x, pre if pre is not None else x, weight, bias, y, h * w, c // num_groups, per_program,
        x.stride(0), x.stride(1), x.stride(3), y.stride(0), y.stride(1), y.stride(3),
        stride(pre) if pre is not None else 0, stride(weight), stride(bias), eps,
        HAS_PRE=pre is not None, SILU=silu, BLOCK_C=triton.next_power_of_2(per_program),
        GROUPS=triton.next_power_of_2(groups), **(INTERPRETED_TILE if INTERPRETED else {}))
    return y


@torch.library.triton_op('sida::group_norm_silu', mutates_args=())
def group_norm_silu(x: torch.Tensor, pre: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                    num_groups: int, eps: float) -> torch.Tensor:
    """The kernel as an operator that torch.compile traces into its graph (inductor launches it as written)."""
    return launch(torch.library.wrap_triton(_group_norm_silu_kernel), x, pre, weight, bias, num_groups, eps)


def reference(x, pre, weight, bias, num_groups, eps, silu=True):
    """The same computation in plain PyTorch, in float64 (float32 group_norm on a CPU loses digits to a large mean:
    1.6 at a mean of 1,000 where the kernel's Welford statistics are within 2e-4), for the tests."""
    x = x.double() + (pre.double()[:, :, None, None] if pre is not None else 0)
    y = torch.nn.functional.group_norm(x, num_groups, eps=eps)
    per = lambda t: t.double().reshape(-1 if t.dim() == 2 else 1, t.shape[-1], 1, 1)      # noqa: E731
    y = y * per(weight) + per(bias)
    return torch.nn.functional.silu(y) if silu else y
