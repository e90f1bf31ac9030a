"""The UNet architectures of EDM (Karras et al. 2022): SongUNet (DDPM++ / NCSN++) and DhariwalUNet (ADM).

Module and parameter names match NVlabs/edm so official weights load key for key. Two additions:
- `output=`: 'denoised' (the usual raw network output F), 'bottleneck' (run the encoder only and
  return its last feature map: SiDA's discriminator reads it), or 'both' (one pass, both results).
- `text_dim` (SongUNet): cross-attention to token embeddings in every attention block, and the
  pooled embedding added to the noise embedding like a class label.
"""

import math

import torch
from torch.nn.functional import silu

from models.layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock, join_skip

OUTPUTS = ('denoised', 'bottleneck', 'both')


def _check_output(output):
    if output not in OUTPUTS:
        raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}')


def split_text_embeds(text_embeds):
    """Text condition layout: row 0 is the pooled sentence embedding, rows 1.. are token embeddings.

    All-zero token rows are padding and are masked out of cross-attention.
    """
    pooled, tokens = text_embeds[:, 0], text_embeds[:, 1:]
    return pooled, tokens, tokens.abs().amax(dim=-1) > 0


class SongUNet(torch.nn.Module):
    def __init__(self,
        img_resolution,                 # Image resolution at input/output.
        in_channels,                    # Number of colour channels at input.
        out_channels,                   # Number of colour channels at output.
        label_dim=0,                    # Number of class labels, 0 = unconditional.
        augment_dim=0,                  # Augmentation label dimensionality, 0 = no augmentation.
        model_channels=128,             # Base multiplier for the number of channels.
        channel_mult=(1, 2, 2, 2),      # Per-resolution multipliers for the number of channels.
        channel_mult_emb=4,             # Multiplier for the dimensionality of the embedding vector.
        num_blocks=4,                   # Number of residual blocks per resolution.
        attn_resolutions=(16,),         # Resolutions with self-attention.
        dropout=0.10,                   # Dropout probability of intermediate activations.
        label_dropout=0,                # Dropout probability of class labels (or text) for classifier-free guidance.
        embedding_type='positional',    # 'positional' for DDPM++, 'fourier' for NCSN++.
        channel_mult_noise=1,           # Timestep embedding size: 1 for DDPM++, 2 for NCSN++.
        encoder_type='standard',        # 'standard' for DDPM++, 'residual' for NCSN++, or 'skip'.
        decoder_type='standard',        # 'standard' or 'skip'.
        resample_filter=(1, 1),         # [1,1] for DDPM++, [1,3,3,1] for NCSN++.
        text_dim=0,                     # Width of text token embeddings, 0 = no text conditioning.
    ):
        if embedding_type not in ('fourier', 'positional'):
            raise ValueError(f'embedding_type must be fourier or positional, got {embedding_type!r}')
        if encoder_type not in ('standard', 'skip', 'residual'):
            raise ValueError(f'encoder_type must be standard, skip or residual, got {encoder_type!r}')
        if decoder_type not in ('standard', 'skip'):
            raise ValueError(f'decoder_type must be standard or skip, got {decoder_type!r}')
        super().__init__()
        self.fused_affines = None       # models.layers.fuse_affines (compiled inference) sets it
        self.channels_last_cat = False  # export's channels-last-cat switch sets it (models.layers.concat_channels)
        self.split_skip_from = None     # export's split-skip switch: from this batch on decoder blocks take (x, skip)
        self.label_dropout = label_dropout
        self.text_dim = text_dim
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=math.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn, text_dim=text_dim,
        )

        # Mapping.
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == 'positional'
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_text = Linear(text_dim, noise_channels, **init) if text_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{res}x{res}_aux_down'] = Conv2d(caux, caux, kernel=0, down=True, resample_filter=resample_filter)
                    self.enc[f'{res}x{res}_aux_skip'] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{res}x{res}_aux_residual'] = Conv2d(caux, cout, kernel=3, down=True, resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if 'aux' not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{res}x{res}_aux_up'] = Conv2d(out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter)
                self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f'{res}x{res}_aux_conv'] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None, text_embeds=None, output='denoised'):
        _check_output(output)
        # Mapping: noise level, then class label / pooled text and augmentation, into one embedding.
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [sin | cos], as DDPM++ was trained
        if self.map_label is not None and class_labels is not None:
            emb = emb + self.map_label(self._drop(class_labels) * math.sqrt(self.map_label.in_features))
        text = None
        if self.map_text is not None:
            if text_embeds is None:
                raise ValueError('this network is text-conditioned: pass text_embeds')
            pooled, tokens, keep = split_text_embeds(self._drop(text_embeds.to(x.dtype)))
            emb = emb + self.map_text(pooled)
            text = (tokens, keep)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))
        projected = self.fused_affines(emb) if self.fused_affines is not None else {}

        # Encoder.
        skips = []
        aux = x
        for name, block in self.enc.items():
            if 'aux_down' in name:
                aux = block(aux)
            elif 'aux_skip' in name:
                x = skips[-1] = x + block(aux)
            elif 'aux_residual' in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb, text, projected.get(f'enc.{name}')) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        if output == 'bottleneck':
            return x
        bottleneck = x

        # Decoder.
        aux = tmp = None
        for name, block in self.dec.items():
            if 'aux_up' in name:
                aux = block(aux)
            elif 'aux_norm' in name:
                tmp = block.silu_of(x)
            elif 'aux_conv' in name:
                tmp = block(tmp)
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = join_skip(x, skips.pop(), self.split_skip_from, self.channels_last_cat)
                x = block(x, emb, text, projected.get(f'dec.{name}'))
        return (aux, bottleneck) if output == 'both' else aux

    def _drop(self, cond):
        """Classifier-free-guidance dropout: zero a sample's whole condition with probability label_dropout."""
        if not (self.training and self.label_dropout):
            return cond
        keep = torch.rand([cond.shape[0]] + [1] * (cond.ndim - 1), device=cond.device) >= self.label_dropout
        return cond * keep.to(cond.dtype)


class DhariwalUNet(torch.nn.Module):
    def __init__(self,
        img_resolution,                 # Image resolution at input/output.
        in_channels,                    # Number of colour channels at input.
        out_channels,                   # Number of colour channels at output.
        label_dim=0,                    # Number of class labels, 0 = unconditional.
        augment_dim=0,                  # Augmentation label dimensionality, 0 = no augmentation.
        model_channels=192,             # Base multiplier for the number of channels.
        channel_mult=(1, 2, 3, 4),      # Per-resolution multipliers for the number of channels.
        channel_mult_emb=4,             # Multiplier for the dimensionality of the embedding vector.
        num_blocks=3,                   # Number of residual blocks per resolution.
        attn_resolutions=(32, 16, 8),   # Resolutions with self-attention.
        dropout=0.10,                   # Dropout probability of intermediate activations.
        label_dropout=0,                # Dropout probability of class labels for classifier-free guidance.
    ):
        super().__init__()
        self.fused_affines = None       # models.layers.fuse_affines (compiled inference) sets it
        self.channels_last_cat = False  # export's channels-last-cat switch sets it (models.layers.concat_channels)
        self.split_skip_from = None     # export's split-skip switch: from this batch on decoder blocks take (x, skip)
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        # Mapping.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode='kaiming_normal', init_weight=math.sqrt(label_dim))
                          if label_dim else None)

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=(res in attn_resolutions), **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None, text_embeds=None, output='denoised'):
        _check_output(output)
        if text_embeds is not None:
            raise ValueError('DhariwalUNet is not text-conditioned')
        # Mapping.
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None and class_labels is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                labels = labels * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = silu(emb)
        projected = self.fused_affines(emb) if self.fused_affines is not None else {}

        # Encoder.
        skips = []
        for name, block in self.enc.items():
            x = block(x, emb, None, projected.get(f'enc.{name}')) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        if output == 'bottleneck':
            return x
        bottleneck = x

        # Decoder.
        for name, block in self.dec.items():
            if x.shape[1] != block.in_channels:
                x = join_skip(x, skips.pop(), self.split_skip_from, self.channels_last_cat)
            x = block(x, emb, None, projected.get(f'dec.{name}'))
        x = self.out_conv(self.out_norm.silu_of(x))
        return (x, bottleneck) if output == 'both' else x
