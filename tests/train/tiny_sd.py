"""A tiny random Stable-Diffusion-shaped pipeline in diffusers layout, built and saved locally (no downloads).

UNet2DConditionModel (epsilon, 8x8x4 latents, cross-attention to 32-d text states), AutoencoderKL (16x16 RGB,
downscale 2), CLIPTextModel + a byte-level CLIPTokenizer whose vocabulary this file writes, DDPMScheduler with
SD's scaled-linear betas, and model_index.json as StableDiffusionPipeline.save_pretrained writes it.
"""

import json
from pathlib import Path

import torch

TEXT_DIM = 32


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


def build_tiny_sd(path, seed=0, prediction_type='epsilon'):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    path = Path(path)
    torch.manual_seed(seed)
    vocab = _write_tokenizer(path / 'tokenizer')
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab - 2,
                                        eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    text.save_pretrained(str(path / 'text_encoder'))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
                                up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'), cross_attention_dim=TEXT_DIM,
                                attention_head_dim=8, norm_num_groups=16)
    unet.save_pretrained(str(path / 'unet'))
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, layers_per_block=1,
                        down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2,
                        norm_num_groups=16, sample_size=16)
    vae.save_pretrained(str(path / 'vae'))
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
                  prediction_type=prediction_type).save_pretrained(str(path / 'scheduler'))
    (path / 'model_index.json').write_text(json.dumps({
        '_class_name': 'StableDiffusionPipeline', 'unet': ['diffusers', 'UNet2DConditionModel'],
        'vae': ['diffusers', 'AutoencoderKL'], 'text_encoder': ['transformers', 'CLIPTextModel'],
        'tokenizer': ['transformers', 'CLIPTokenizer'], 'scheduler': ['diffusers', 'DDPMScheduler'],
        'safety_checker': [None, None], 'feature_extractor': [None, None]}, indent=2))
    return path
