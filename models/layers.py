"""Building blocks shared by the UNets.

Parameter and buffer names follow NVlabs/edm so that official checkpoints load key for key;
the computations are our own (attention goes through `scaled_dot_product_attention`, which
PyTorch dispatches to fused kernels on the GPU and ONNX exports as plain matmuls).
"""

import math

import torch
from torch.nn.functional import silu


def weight_init(shape, mode, fan_in, fan_out):
    """EDM's initialisers, named by mode."""
    if mode == 'xavier_uniform':
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal':
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform':
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal':
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'unknown init mode {mode!r}')


class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        w = self.weight.to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return torch.nn.functional.linear(x, w, b)


class Conv2d(torch.nn.Module):
    """Convolution with optional 2x up/downsampling by a separable FIR filter (kernel 0 = resample only)."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=(1, 1), fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        if up and down:
            raise ValueError('Conv2d cannot both upsample and downsample')
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        # The [1,1] filter (DDPM++) is a 2x2 box: average pooling down, nearest-neighbour up, exactly. Those
        # replace the depthwise convolutions, which are slow and keep torch.compile off the channels-last layout.
        self.box = len(resample_filter) == 2 and resample_filter[0] == resample_filter[1]
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer('resample_filter', f if up or down else None)

    def forward(self, x):
        conv = torch.nn.functional.conv2d
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0

        if self.fused_resample and self.up and w is not None:
            x = self._up(x, f, padding=max(f_pad - w_pad, 0))
            x = conv(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = conv(x, w, padding=w_pad + f_pad)
            x = self._down(x, f, padding=0)
        else:
            if self.up:
                x = self._up(x, f, padding=f_pad)
            if self.down:
                x = self._down(x, f, padding=f_pad)
            if w is not None:
                x = conv(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x

    def over_parts(self, parts):
        """This convolution of the parts' channel concatenation, never concatenated: each part convolved with its slice
        of the weight, summed (a convolution is linear in its input channels). For split-skip, where a decoder block's
        input stays two tensors; no resampling."""
        if self.up or self.down or self.weight is None:
            raise ValueError('over_parts is for a plain convolution, without resampling')
        w = self.weight.to(parts[0].dtype)
        slices = w.split([p.shape[1] for p in parts], dim=1)
        x = sum(torch.nn.functional.conv2d(p, s, padding=w.shape[-1] // 2) for p, s in zip(parts, slices))
        return x if self.bias is None else x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)

    # A 2-tap filter always has padding 0 here, so the box shortcuts need none.
    def _up(self, x, f, padding):
        if self.box:
            return torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')
        return torch.nn.functional.conv_transpose2d(x, f.mul(4).tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2,
                                                    padding=padding)

    def _down(self, x, f, padding):
        if self.box:
            return torch.nn.functional.avg_pool2d(x, 2)
        return torch.nn.functional.conv2d(x, f.tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2, padding=padding)


class GroupNorm(torch.nn.Module):
    # Set per module by export's compile_generator (its grouped-norm switch, inference only): under torch.compile,
    # normalise through a grouped view of x itself instead of group_norm (see _norm_grouped_view).
    grouped_view_when_compiled = False
    # Set by export's compile_generator (its fused-norm switch, CUDA inference only): under torch.compile, silu_of
    # runs models.fused_norm's one-pass Triton kernel from this batch size on (where it fills the GPU).
    fused_silu_min_batch = None
    # Set by export's compile_generator (its folded-norm switch, inference only): under torch.compile, from this batch
    # size on, normalise through folded_affine: per-channel sums, then one multiply-add per element.
    folded_min_batch = None

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        if x.dtype != torch.float32 and torch.is_autocast_enabled(x.device.type):
            # Autocast would upcast group_norm to float32 (and everything after it up to the next conv). The
            # native kernels accumulate the statistics in float32 anyway, so keep the activations in bf16/fp16.
            with torch.autocast(x.device.type, enabled=False):
                return self._norm(x)
        return self._norm(x)

    def silu_of(self, x, pre=None, scale=None, shift=None):
        """silu(norm(x + pre) * scale + shift), pre, scale and shift [N, C, 1, 1] or None: what UNetBlock does after
        each of its norms, as one kernel when fused (models/fused_norm.py), else exactly as written out below."""
        fused = self.fused_silu_min_batch
        if fused is not None and x.dim() == 4 and x.shape[0] >= fused and torch.compiler.is_compiling():
            weight, bias = self.weight.float(), self.bias.float()
            if scale is not None:       # (norm * w + b) * scale + shift: a per-sample affine
                scale, shift = scale.flatten(1).float(), shift.flatten(1).float()
                weight, bias = weight * scale, bias * scale + shift
            return torch.ops.sida.group_norm_silu(x, None if pre is None else pre.flatten(1), weight, bias,
                                                  self.num_groups, self.eps)
        if self._folding(x):
            a, b = folded_affine(x, self, pre, scale, shift)
            return silu(torch.addcmul(b, x.float(), a)).to(x.dtype)
        y = self(x if pre is None else x + pre)
        return silu(y if scale is None else torch.addcmul(shift, y, scale))

    def _folding(self, x):
        return (self.folded_min_batch is not None and x.dim() == 4 and x.shape[0] >= self.folded_min_batch
                and torch.compiler.is_compiling())

    def _norm(self, x):
        if self._folding(x):
            a, b = folded_affine(x, self)
            return torch.addcmul(b, x.float(), a).to(x.dtype)
        if self.grouped_view_when_compiled and torch.compiler.is_compiling():
            return _norm_grouped_view(x, self.num_groups, self.weight, self.bias, self.eps)
        return torch.nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def folded_affine(x, norm, pre=None, scale=None, shift=None):
    """GroupNorm `norm` of x + pre, then * scale + shift, as one multiply-add per (sample, channel): (a, b), float32
    [N, C, 1, 1], with norm(x + pre) * scale + shift == x * a + b. For the folded-norm switch (compiled inference):

    - the statistics come from sums per channel over the pixels, which read NHWC activations along their channels, so
      the loads are coalesced (inductor's group_norm reduces one group at a time: 8-16 channels, 16-32 contiguous
      bytes, then a jump to the next pixel; 1.5 TB/s on an H100 at batch 256), then the groups are summed;
    - the variance is E[x^2] - E[x]^2 in float32, exact enough unless a group's mean is hundreds of its standard
      deviations;
    - a and b are realised as small buffers, so the kernel that applies them does a multiply-add per element instead of
      recomputing the statistics' rsqrt and the affines (the apply kernels ran at 1.7-1.9 TB/s, partly bound by
      their arithmetic). pre and scale/shift are [N, C, 1, 1] or None."""
    n, c, h, w = x.shape
    groups, per_group, pixels = norm.num_groups, c // norm.num_groups, h * w
    xf = x.float()
    s1, s2 = xf.sum((2, 3)), xf.square().sum((2, 3))
    if pre is not None:             # the sums of x + pre: pre is constant over the pixels
        p = pre.float().reshape(n, c)
        s2 = s2 + p * (2 * s1 + pixels * p)
        s1 = s1 + pixels * p
    count = pixels * per_group
    mean = s1.view(n, groups, per_group).sum(-1, keepdim=True) / count
    var = (s2.view(n, groups, per_group).sum(-1, keepdim=True) / count - mean.square()).clamp_min(0)
    weight = norm.weight.float() if norm.weight is not None else torch.ones(c, device=x.device)    # affine=False
    bias = norm.bias.float() if norm.bias is not None else torch.zeros(c, device=x.device)
    a = torch.rsqrt(var + norm.eps) * weight.view(groups, per_group)
    b = (bias.view(groups, per_group) - mean * a).reshape(n, c)
    a = a.reshape(n, c)
    if pre is not None:
        b = b + p * a
    if scale is not None:
        scale = scale.float().reshape(n, c)
        a, b = a * scale, b * scale + shift.float().reshape(n, c)
    return _realised(a).view(n, c, 1, 1), _realised(b).view(n, c, 1, 1)


def _realised(t):
    """t as a buffer of its own when compiling (inductor's layout op realises it), so its consumers load it instead of
    recomputing it per element; t itself otherwise."""
    if not torch.compiler.is_compiling():
        return t
    return torch.ops.prims.inductor_force_stride_order.default(t, list(t.stride()))


class FoldedTorchGroupNorm(torch.nn.GroupNorm):
    """A torch.nn.GroupNorm (those of diffusers' SD UNet and VAE) normalised through folded_affine under
    torch.compile once a call has `min_elements` values or more; made by fold_torch_group_norms, which keeps the
    module's parameters (and so its state-dict keys)."""

    min_elements = 1

    def forward(self, x):
        if x.dim() in (3, 4) and x.numel() >= self.min_elements and torch.compiler.is_compiling():
            image = x if x.dim() == 4 else x.unsqueeze(-1)      # [N, C, L] (an attention's tokens) as [N, C, L, 1]
            a, b = folded_affine(image, self)
            return torch.addcmul(b, image.float(), a).to(x.dtype).view(x.shape)
        return super().forward(x)


def fold_torch_group_norms(module, min_elements):
    """Every torch.nn.GroupNorm inside `module` replaced by a FoldedTorchGroupNorm sharing its parameters (in place;
    sida's own GroupNorm is not a torch.nn.GroupNorm and is switched by folded-norm instead). Returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.GroupNorm:
                folded = FoldedTorchGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine,
                                              device='meta')
                folded.weight, folded.bias = child.weight, child.bias
                folded.min_elements = min_elements
                setattr(parent, name, folded)
                count += 1
    return count


def _norm_grouped_view(x, num_groups, weight, bias, eps):
    """group_norm written as a view of x's memory: [N, C, *S] -> [N, G, C/G, *S] splits the channel dimension only,
    which is a view in any layout, so the statistics and the normalisation read x where it lies (on CUDA, group_norm
    first makes its input contiguous, i.e. NCHW, a copy for a channels-last network). A speed candidate, off by
    default: on the H200 (2026-12-06) it was slower at batch 64 and 256, because the strided reads of the decoder's
    NCHW concats then land in its statistics' reductions. Statistics in float32, as the native kernels keep them; the
    result in x's dtype."""
    n, c = x.shape[:2]
    groups = x.float().unflatten(1, (num_groups, c // num_groups))
    var, mean = torch.var_mean(groups, dim=tuple(range(2, groups.dim())), correction=0, keepdim=True)
    y = ((groups - mean) * torch.rsqrt(var + eps)).flatten(1, 2)
    per_channel = (1, c) + (1,) * (x.dim() - 2)
    return (y * weight.float().reshape(per_channel) + bias.float().reshape(per_channel)).to(x.dtype)


class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal embedding of the noise label (DDPM++ and ADM); returns [cos | sin]."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
    """Random Fourier features of the noise label (NCSN++); returns [cos | sin]."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


def attention_heads(q, k, v):
    """Softmax attention over [batch, heads, length, channels] tensors, as `attention` computes it (float32 stays
    float32; bf16/fp16 run the fused kernels), strides as they come: those kernels need only the channels dense."""
    half = q.dtype in (torch.bfloat16, torch.float16)
    if not half:
        q, k, v = q.float(), k.float(), v.float()
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def attention(q, k, v, mask=None):
    """Softmax attention over [batch*heads, channels, length] tensors.

    float32 inputs are attended in float32, like EDM. bf16/fp16 inputs (autocast, half-precision serving) stay in
    their dtype so that the fused flash / memory-efficient kernels run; those keep the softmax statistics in float32.
    """
    dtype = q.dtype
    half = dtype in (torch.bfloat16, torch.float16)
    # A leading singleton axis makes the inputs 4-D, the layout every ONNX exporter lowers. The fused kernels need
    # the channel axis contiguous (else SDPA falls back to its math path); float32 keeps EDM's plain math attention.
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    q, k, v = (t.contiguous() if half else t.float() for t in (q, k, v))
    q, k, v = (t.unsqueeze(0) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.unsqueeze(0))
    return out.squeeze(0).transpose(1, 2).to(dtype)


class UNetBlock(torch.nn.Module):
    """Residual block with optional resampling, self-attention and (for text models) cross-attention.

    Cross-attention is ours, not EDM's: queries from the image, keys/values from the text tokens
    plus one learned null token, so a caption that is entirely padding still attends somewhere.
    """

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True,
                 init=None, init_zero=None, init_attn=None, text_dim=0):
        super().__init__()
        init = init if init is not None else {}
        init_zero = init_zero if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

        # The qkv projection reordered by plan_qkv (export's planar-qkv switch); None until then.
        self.register_buffer('qkv_planar_weight', None, persistent=False)
        self.register_buffer('qkv_planar_bias', None, persistent=False)
        self.qkv_planar_from = None
        self.text_dim = text_dim if self.num_heads else 0
        if self.text_dim:
            self.norm3 = GroupNorm(num_channels=out_channels, eps=eps)
            self.cross_q = Conv2d(out_channels, out_channels, kernel=1, **(init_attn if init_attn is not None else init))
            self.cross_kv = Linear(text_dim, out_channels * 2, **init)
            self.cross_null = torch.nn.Parameter(torch.zeros(1, 1, text_dim))
            self.cross_proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x, emb, text=None, projected=None):
        """projected: this block's self.affine(emb), when the UNet computed every block's at once (FusedAffines).
        x may be a tuple of tensors, the parts of a channel concatenation (a decoder block under split-skip): the norm
        reads their concatenation (which the compiler fuses into its kernels) and the skip convolves them apart."""
        parts = x if isinstance(x, tuple) else None
        x = orig = torch.cat(parts, dim=1) if parts else x
        x = self.conv0(self.norm0.silu_of(x))

        params = (self.affine(emb) if projected is None else projected).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            x = self.norm1.silu_of(x, scale=scale + 1, shift=shift)
        else:
            x = self.norm1.silu_of(x, pre=params)

        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        skip = orig if self.skip is None else self.skip.over_parts(parts) if parts else self.skip(orig)
        x = (x + skip) * self.skip_scale

        if self.num_heads:
            x = (self.proj(self.self_attend(self.norm2(x))) + x) * self.skip_scale

        if self.text_dim and text is not None:
            x = (self.cross_attend(x, *text) + x) * self.skip_scale
        return x

    def self_attend(self, y):
        """Self-attention of the normalised y, before its output projection. EDM's qkv channels are ordered (head,
        channel, {q,k,v}); with planar_qkv's reordered copy ({q,k,v}, head, channel) q, k and v are views of the
        channels-last qkv output, handed to the fused kernels without the three copies the EDM order costs."""
        n, c, h, w = y.shape
        heads = self.num_heads
        if self.qkv_planar_weight is None or n < self.qkv_planar_from:
            q, k, v = self.qkv(y).reshape(n * heads, c // heads, 3, h * w).unbind(2)
            return attention(q, k, v).reshape(n, c, h, w)
        qkv = torch.nn.functional.conv2d(y, self.qkv_planar_weight.to(y.dtype), self.qkv_planar_bias.to(y.dtype))
        q, k, v = qkv.reshape(n, 3, heads, c // heads, h * w).transpose(-1, -2).unbind(1)     # [n, heads, hw, channels]
        return attention_heads(q, k, v).to(y.dtype).transpose(-1, -2).reshape(n, c, h, w)

    def plan_qkv(self, from_batch=1):
        """Keep a copy of the qkv projection with its output channels reordered for self_attend, used from batch
        `from_batch` on (inference only: the copy goes stale if the weights change; not part of the state dict)."""
        self.qkv_planar_from = from_batch
        c, heads = self.out_channels, self.num_heads
        order = torch.arange(3 * c, device=self.qkv.weight.device).reshape(heads, c // heads, 3).permute(2, 0, 1).flatten()
        self.qkv_planar_weight = self.qkv.weight.detach()[order].clone()
        self.qkv_planar_bias = self.qkv.bias.detach()[order].clone()

    def cross_attend(self, x, tokens, keep):
        n, c, h, w = x.shape
        heads = self.num_heads
        tokens = torch.cat([self.cross_null.to(tokens.dtype).expand(n, 1, -1), tokens], dim=1)
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
        q = self.cross_q(self.norm3(x)).reshape(n * heads, c // heads, h * w)
        kv = self.cross_kv(tokens.to(x.dtype))                                   # [n, L, 2c]
        k, v = kv.reshape(n, -1, 2, heads, c // heads).permute(2, 0, 3, 4, 1).reshape(2, n * heads, c // heads, -1)
        mask = keep[:, None, :].repeat_interleave(heads, dim=0)                 # [n*heads, 1, L]
        return self.cross_proj(attention(q, k, v, mask).reshape(n, c, h, w))


def join_skip(x, skip, split_from=None, channels_last=False):
    """A decoder block's input from the block before and the encoder's skip: the tuple (x, skip) from batch
    `split_from` on (export's split-skip switch: UNetBlock reads the parts apart), else their channel concatenation."""
    if split_from is not None and x.shape[0] >= split_from:
        return x, skip
    return concat_channels([x, skip], channels_last)


def concat_channels(tensors, channels_last=False):
    """torch.cat along channels; channels_last (compiled inference, NHWC inputs): fix the layout of each input and of
    the result as channels-last for inductor (its force_stride_order: free for a buffer whose layout is still open).
    Left alone, inductor lays the concat out NCHW (it takes channels-last only from inputs whose layout is already
    fixed so, and a concat computed as a pointwise kernel gets the default layout), and the GroupNorm after it reads
    with a 1,024-element stride: 0.69 ms a call at batch 256 on an H100 (profiles of 2026-12-06 and -07). The op is
    registered by torch._inductor.inductor_prims, which export's compile_generator imports."""
    forced = channels_last and torch.compiler.is_compiling() and all(
        t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) for t in tensors)
    if not forced:
        return torch.cat(tensors, dim=1)
    force = torch.ops.prims.inductor_force_stride_order.default
    joined = torch.cat([force(t, _channels_last_strides(t.shape)) for t in tensors], dim=1)
    return force(joined, _channels_last_strides(joined.shape))


def _channels_last_strides(shape):
    n, c, h, w = shape
    return [h * w * c, 1, w * c, c]


class FusedAffines(torch.nn.Module):
    """Every UNetBlock's projection of the shared embedding as one matmul: a few dozen tiny GEMM launches become one,
    which is most of what they cost at batch 1. For inference only: the weights are copied in once (fuse_affines), so
    they go stale if the blocks' weights change afterwards. Not part of the state dict."""

    def __init__(self, blocks):
        super().__init__()
        self.names = list(blocks)
        self.sizes = [blocks[name].affine.out_features for name in self.names]
        affines = [blocks[name].affine for name in self.names]
        self.register_buffer('weight', torch.cat([a.weight.detach() for a in affines]), persistent=False)
        self.register_buffer('bias', torch.cat([a.bias.detach() for a in affines]), persistent=False)

    def forward(self, emb):
        out = torch.nn.functional.linear(emb, self.weight.to(emb.dtype), self.bias.to(emb.dtype))
        return dict(zip(self.names, out.split(self.sizes, dim=1)))


def fuse_affines(unet):
    """Give a SongUNet/DhariwalUNet one FusedAffines over its encoder's and decoder's blocks (all with biases)."""
    blocks = {f'{part}.{name}': block for part in ('enc', 'dec') for name, block in getattr(unet, part).items()
              if isinstance(block, UNetBlock) and block.affine.bias is not None}
    unet.fused_affines = FusedAffines(blocks)
    return unet
