"""The API addition behind the seed walk: POST /v1/generate with seed_b and mix (a slerp of two seeds' noise)."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.seeds import noise_for_seeds, slerp
from tests.serve.conftest import in_process
from tests.ui.conftest import CLASS_MODEL


@pytest.fixture(scope='module')
def api(bundles):
    with in_process(bundles[0]) as client:
        yield client


def pixels(image):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image['b64'])))).astype(int)


def test_slerp_keeps_the_ends_exact_and_the_norm_on_the_noise_shell():
    a, b = noise_for_seeds([0, 1], (3, 32, 32)), noise_for_seeds([2, 3], (3, 32, 32))
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    middle, linear = slerp(a, b, 0.5).flatten(1).norm(dim=1), ((a + b) / 2).flatten(1).norm(dim=1)
    expected = a.flatten(1).norm(dim=1)
    assert torch.allclose(middle, expected, rtol=0.05) and (linear < 0.8 * expected).all()
    assert torch.allclose(slerp(a, a, 0.3), a)          # parallel inputs: no division by zero


def test_mix_walks_from_seed_to_seed_b(api):
    c = api
    gen = lambda **kw: c.post('/v1/generate', json={'model': CLASS_MODEL, 'class_name': 'dog', **kw})
    a, b = (gen(seed=s, n=2).json()['images'] for s in (20, 30))
    start, middle, end = (gen(seed=20, seed_b=30, mix=m, n=2).json()['images'] for m in (0.0, 0.5, 1.0))
    for i in range(2):
        assert np.abs(pixels(start[i]) - pixels(a[i])).max() <= 1 and np.abs(pixels(end[i]) - pixels(b[i])).max() <= 1
        assert np.abs(pixels(middle[i]) - pixels(a[i])).max() > 1 and np.abs(pixels(middle[i]) - pixels(b[i])).max() > 1
    assert [(x['seed'], x['seed_b'], x['mix']) for x in middle] == [(20, 30, 0.5), (21, 31, 0.5)]
    png = Image.open(io.BytesIO(base64.b64decode(middle[1]['b64'])))
    assert png.text == {'model': CLASS_MODEL, 'seed': '21', 'class_name': 'dog', 'seed_b': '31', 'mix': '0.5'}


def test_server_timing_header_has_the_total(api):
    r = api.post('/v1/generate', json={'model': CLASS_MODEL, 'seed': 1, 'response': 'binary'})
    assert [part.split(';')[0].strip() for part in r.headers['Server-Timing'].split(',')] == ['queue', 'generate', 'total']


@pytest.mark.parametrize('payload,fragment', [
    ({'seed': 1, 'mix': 0.5}, 'seed_b and mix go together'),
    ({'seed': 1, 'seed_b': 2}, 'seed_b and mix go together'),
    ({'seed_b': 2, 'mix': 0.5}, 'needs seed'),
    ({'seed': 1, 'seed_b': 2, 'mix': 1.5}, 'mix:'),
    ({'seed': 1, 'seed_b': 2, 'mix': -0.1}, 'mix:'),
    ({'seed': 1, 'seed_b': -2, 'mix': 0.5}, 'seed_b:'),
    ({'seed': 1, 'seed_b': 2, 'mix': 'half'}, 'mix:'),
])
def test_incomplete_or_out_of_range_walks_get_422(api, payload, fragment):
    r = api.post('/v1/generate', json={'model': CLASS_MODEL, **payload})
    assert r.status_code == 422 and fragment in r.json()['error']['message'], r.text


def test_seed_b_past_the_largest_seed_is_refused(api):
    r = api.post('/v1/generate', json={'model': CLASS_MODEL, 'seed': 0, 'seed_b': 2 ** 63 - 1, 'mix': 0.5, 'n': 2})
    assert r.status_code == 400 and 'seed_b + n - 1' in r.json()['error']['message']


def test_openapi_documents_the_seed_walk(api):
    props = api.get('/openapi.json').json()['components']['schemas']['GenerateRequest']['properties']
    assert 'slerp' in props['seed_b']['description'] and props['mix']['anyOf'][0] == {'type': 'number', 'minimum': 0.0, 'maximum': 1.0}


def test_ui_can_be_switched_off(bundles):
    with in_process(bundles[0], ui=False, warmup=False) as c:
        assert c.get('/ui/').status_code == 404 and c.get('/healthz').status_code == 200
        assert c.app.state.ui is False


def test_the_page_is_mounted_through_its_entry_point(bundles):
    """serve never imports ui: the page comes from the `sida.pages` entry point this package installs."""
    from importlib.metadata import entry_points
    assert [(e.name, e.value) for e in entry_points(group='sida.pages')] == [('ui', 'ui.mount:mount_in_process')]
    with in_process(bundles[0], ui=True, warmup=False) as c:
        assert c.app.state.ui is True
        page = c.get('/ui/')
        assert page.status_code == 200 and 'gradio' in page.text.lower()
