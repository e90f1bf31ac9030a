import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from models.architecture import build_denoiser
from models.bundle import CONFIG_FILE, WEIGHTS_FILE, BundleError, load_bundle, save_bundle, sha256_file, validate_bundle
from models.generator import OneStepGenerator
from tests.conftest import perturb_, tiny_adm, tiny_ddpmpp

LABELS = [f'class{i}' for i in range(10)]


def _save(path, spec=None, dtype='float32', **kw):
    spec = spec or tiny_ddpmpp()
    g = OneStepGenerator(perturb_(build_denoiser(spec)), init_sigma=2.5).eval()
    save_bundle(path, g, name='tiny', architecture=spec, dtype=dtype,
                condition=kw.pop('condition', {'kind': 'class', 'labels': LABELS}), provenance={'method': 'test'})
    return g


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / 'bundle'
    return path, _save(path)


def _edit_config(path, **changes):
    raw = json.loads((path / CONFIG_FILE).read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    (path / CONFIG_FILE).write_text(json.dumps(raw))


def _rehash(path):
    raw = json.loads((path / CONFIG_FILE).read_text())
    raw['sha256'][WEIGHTS_FILE] = sha256_file(path / WEIGHTS_FILE)
    (path / CONFIG_FILE).write_text(json.dumps(raw))


def test_round_trip_gives_identical_outputs(bundle):
    path, g = bundle
    loaded = load_bundle(path)
    noise, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])
    assert torch.equal(loaded.generator(noise, labels), g(noise, labels))
    torch.testing.assert_close(loaded.generator.denoise(noise, labels), g.denoise(noise, labels), rtol=0, atol=0)
    assert loaded.config.label_names == LABELS and loaded.config.provenance == {'method': 'test'}
    assert not loaded.generator.training


def test_weights_are_readable_as_the_umask_allows(tmp_path):
    """safetensors writes 0600; a bundle is often read by another user (a container's), so it follows the umask."""
    import os
    old = os.umask(0o022)
    try:
        _save(tmp_path / 'b')
    finally:
        os.umask(old)
    assert (tmp_path / 'b' / WEIGHTS_FILE).stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_half_precision_weights_load(tmp_path, dtype):
    g = _save(tmp_path / 'b', dtype=dtype)
    loaded = load_bundle(tmp_path / 'b')
    noise, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    torch.testing.assert_close(loaded.generator.denoise(noise, labels), g.denoise(noise, labels), atol=0.05, rtol=0.05)


def test_unconditional_adm_bundle(tmp_path):
    _save(tmp_path / 'b', spec=tiny_adm(label_dim=0), condition={'kind': 'none'})
    assert load_bundle(tmp_path / 'b').generator(torch.randn(1, 3, 16, 16)).shape == (1, 16, 16, 3)


def _expect(path, *fragments):
    """Both entry points refuse the bundle with the same error: the check alone, and loading (which checks against the
    network it then loads)."""
    with pytest.raises(BundleError) as e:
        validate_bundle(path)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)
    with pytest.raises(BundleError) as loading:
        load_bundle(path)
    assert str(loading.value) == str(e.value)
    return e.value


def test_missing_directory(tmp_path):
    _expect(tmp_path / 'nope', 'nope', 'not a directory')


def test_missing_config(bundle):
    path, _ = bundle
    (path / CONFIG_FILE).unlink()
    _expect(path, CONFIG_FILE, 'missing')


def test_invalid_json(bundle):
    path, _ = bundle
    (path / CONFIG_FILE).write_text('{"format": ')
    _expect(path, CONFIG_FILE, 'not valid JSON')


def test_wrong_format_version(bundle):
    path, _ = bundle
    _edit_config(path, format='sida-bundle/99')
    _expect(path, 'format', "expected 'sida-bundle/1'")


def test_missing_and_unknown_fields(bundle):
    path, _ = bundle
    _edit_config(path, condition=None)
    _expect(path, 'condition', 'missing required field')
    shutil.rmtree(path)
    _save(path)
    _edit_config(path, colour='blue')
    _expect(path, 'colour', 'unknown field')


def test_unknown_architecture(bundle):
    path, _ = bundle
    raw = json.loads((path / CONFIG_FILE).read_text())
    _edit_config(path, architecture={**raw['architecture'], 'network': 'MysteryNet'})
    _expect(path, 'architecture', "unknown network 'MysteryNet'")


def test_architecture_with_unknown_kwarg(bundle):
    path, _ = bundle
    raw = json.loads((path / CONFIG_FILE).read_text())
    raw['architecture']['network_kwargs']['wings'] = 2
    _edit_config(path, architecture=raw['architecture'])
    _expect(path, 'architecture', "does not take ['wings']")


def test_resolution_disagreeing_with_architecture(bundle):
    path, _ = bundle
    _edit_config(path, resolution=64)
    _expect(path, 'resolution', 'disagrees')


def test_label_count_mismatch(bundle):
    path, _ = bundle
    _edit_config(path, condition={'kind': 'class', 'labels': ['a', 'b']})
    _expect(path, 'condition.labels', 'label_dim=10')


def test_malformed_space_is_refused_clearly(bundle):
    path, _ = bundle
    _edit_config(path, space='latent')
    _expect(path, 'space', 'latent-space object')
    _edit_config(path, space={'kind': 'latent', 'vae': 'vae.safetensors'})
    _expect(path, 'space.vae_config', 'AutoencoderKL')


def test_missing_weights(bundle):
    path, _ = bundle
    (path / WEIGHTS_FILE).unlink()
    _expect(path, WEIGHTS_FILE, 'missing')


def test_hash_mismatch(bundle):
    path, _ = bundle
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    _expect(path, WEIGHTS_FILE, 'hash mismatch')


def test_truncated_weights(bundle):
    path, _ = bundle
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    _expect(path, WEIGHTS_FILE, 'truncated')
    (path / WEIGHTS_FILE).write_bytes(data[:5])
    _expect(path, WEIGHTS_FILE, 'truncated')


def test_wrong_shapes(bundle):
    path, g = bundle
    state = {k: v.clone() for k, v in g.denoiser.state_dict().items()}
    key = 'model.map_layer0.weight'
    state[key] = torch.zeros(3, 3)
    save_file(state, str(path / WEIGHTS_FILE))
    _rehash(path)
    _expect(path, key, 'shape [3, 3]')


def test_missing_and_unexpected_tensors(bundle):
    path, g = bundle
    state = dict(g.denoiser.state_dict())
    state.pop('model.map_layer0.bias')
    save_file(state, str(path / WEIGHTS_FILE))
    _rehash(path)
    _expect(path, 'model.map_layer0.bias', 'missing tensor')
    state['model.map_layer0.bias'] = g.denoiser.state_dict()['model.map_layer0.bias']
    state['model.extra'] = torch.zeros(1)
    save_file(state, str(path / WEIGHTS_FILE))
    _rehash(path)
    _expect(path, 'model.extra', 'unexpected tensor')


def test_load_refuses_what_validate_refuses(bundle):
    path, _ = bundle
    (path / WEIGHTS_FILE).write_bytes(b'garbage!')
    with pytest.raises(BundleError, match='not a safetensors file|truncated'):
        load_bundle(path)
