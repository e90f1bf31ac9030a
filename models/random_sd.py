"""Randomly initialised Stable-Diffusion-shaped pipelines in diffusers layout, built locally (nothing downloaded).

For tests ('tiny': 8x8x4 latents, 16x16 images, 32-d text states, seconds on a CPU) and as stand-ins for speed
measurements ('sd15': the published Stable Diffusion 1.5 shapes: 860M-parameter UNet on 64x64x4 latents, the
VAE to 512x512, a 12-layer 768-d CLIP text encoder). Each holds a UNet2DConditionModel, an AutoencoderKL, a
CLIPTextModel with a byte-level CLIPTokenizer whose vocabulary is written here, a DDPMScheduler with SD's
scaled-linear betas, and model_index.json as StableDiffusionPipeline.save_pretrained writes it. Random weights
make pictures of nothing: use them to test plumbing and to time networks, never to judge quality.
"""

import json
from pathlib import Path

import torch

CONFIGS = {
    'tiny': {
        'unet': dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                     down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
                     cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16),
        'vae': dict(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, layers_per_block=1,
                    down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2, norm_num_groups=16,
                    sample_size=16),
        'text': dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    },
    'sd15': {
        'unet': dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
                     up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3, cross_attention_dim=768, attention_head_dim=8,
                     norm_num_groups=32),
        'vae': dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                    down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4, norm_num_groups=32,
                    sample_size=512, scaling_factor=0.18215),
        'text': dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, hidden_act='quick_gelu'),
    },
}


def _byte_chars():
    """The 256 printable characters byte-level BPE uses for bytes (printable bytes map to themselves)."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _write_tokenizer(root):
    chars = _byte_chars()
    tokens = chars + [c + '</w>' for c in chars] + ['<|startoftext|>', '<|endoftext|>']
    root.mkdir(parents=True, exist_ok=True)
    (root / 'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (root / 'merges.txt').write_text('#version: 0.2\n')
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer(str(root / 'vocab.json'), str(root / 'merges.txt'), model_max_length=77)
    tok.save_pretrained(str(root))
    return len(tokens)


def write_random_sd(path, name='tiny', seed=0, prediction_type='epsilon'):
    """Write a random pipeline of CONFIGS[name] to `path` (a diffusers directory); returns the path."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    if name not in CONFIGS:
        raise ValueError(f'unknown random pipeline {name!r}; choose one of {sorted(CONFIGS)}')
    c, path = CONFIGS[name], Path(path)
    torch.manual_seed(seed)
    vocab = _write_tokenizer(path / 'tokenizer')
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                        pad_token_id=vocab - 1, **c['text']))
    text.save_pretrained(str(path / 'text_encoder'))
    UNet2DConditionModel(**c['unet']).save_pretrained(str(path / 'unet'))
    AutoencoderKL(**c['vae']).save_pretrained(str(path / 'vae'))
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
                  prediction_type=prediction_type).save_pretrained(str(path / 'scheduler'))
    (path / 'model_index.json').write_text(json.dumps({
        '_class_name': 'StableDiffusionPipeline', 'unet': ['diffusers', 'UNet2DConditionModel'],
        'vae': ['diffusers', 'AutoencoderKL'], 'text_encoder': ['transformers', 'CLIPTextModel'],
        'tokenizer': ['transformers', 'CLIPTokenizer'], 'scheduler': ['diffusers', 'DDPMScheduler'],
        'safety_checker': [None, None], 'feature_extractor': [None, None]}, indent=2))
    return path
