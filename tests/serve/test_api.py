"""The HTTP API in-process: the real app (models, batchers, middleware) behind a TestClient, with httpx and Pillow.
What needs a socket (streamed bodies, disconnects, shutdown) is in test_real_server.py."""

import base64
import concurrent.futures
import io
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import in_process


def decode(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


@pytest.fixture(scope='module')
def api(class_bundle_dir):
    with in_process(class_bundle_dir, max_n=8) as client:
        yield client


def test_health_readiness_models_and_metrics(api):
    assert api.get('/healthz').json() == {'status': 'ok'}
    ready = api.get('/readyz')
    assert ready.status_code == 200 and ready.json()['ready']
    models = api.get('/v1/models').json()['data']
    assert models[0]['id'] == 'demo-untrained-ddpmpp' and models[0]['resolution'] == 32
    assert models[0]['condition'] == {'kind': 'class', 'labels': ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                                                                  'horse', 'ship', 'truck']}
    assert models[0]['backend'] == 'torch'
    api.post('/v1/generate', json={'n': 1, 'seed': 1})
    text = api.get('/metrics').text
    assert 'sida_requests_total' in text and 'sida_batch_size_bucket' in text and 'sida_request_seconds' in text
    assert api.get('/openapi.json').json()['info']['title'] == 'sida'


def test_generate_json_png_with_metadata_and_reproducible_seeds(api):
    r = api.post('/v1/generate', json={'class_name': 'Cat', 'n': 3, 'seed': 10})
    assert r.status_code == 200 and r.headers['X-Request-ID'] == r.json()['request_id']
    body = r.json()
    assert [i['seed'] for i in body['images']] == [10, 11, 12] and body['images'][0]['class_name'] == 'cat'
    image = Image.open(io.BytesIO(base64.b64decode(body['images'][0]['b64'])))
    assert image.size == (32, 32) and image.text['seed'] == '10' and image.text['class_name'] == 'cat'
    again = api.post('/v1/generate', json={'class_name': 'cat', 'n': 1, 'seed': 11}).json()
    assert np.abs(decode(again['images'][0]['b64']).astype(int) - decode(body['images'][1]['b64']).astype(int)).max() <= 1
    assert set(body['timings']) == {'queue_ms', 'generate_ms', 'total_ms'}


@pytest.mark.parametrize('fmt,media', [('png', 'image/png'), ('jpeg', 'image/jpeg'), ('webp', 'image/webp')])
def test_binary_responses(api, fmt, media):
    r = api.post('/v1/generate', json={'class_label': 2, 'seed': 0, 'format': fmt, 'response': 'binary'})
    assert r.status_code == 200 and r.headers['content-type'] == media
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    r = api.post('/v1/generate', json={'class_label': 2, 'seed': 0, 'n': 3, 'format': fmt, 'response': 'binary'})
    assert r.headers['content-type'] == 'application/zip'
    assert sorted(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == [f'seed{i}.{fmt}' for i in range(3)]


def test_npy_tensor_response_round_trips_bit_exactly(api):
    """format npy: the uint8 pixels themselves, the same as the lossless PNGs of the same seeds, bit for bit."""
    pngs = api.post('/v1/generate', json={'class_label': 4, 'seed': 7, 'n': 3}).json()['images']
    r = api.post('/v1/generate', json={'class_label': 4, 'seed': 7, 'n': 3, 'format': 'npy', 'response': 'binary'})
    assert r.status_code == 200 and r.headers['content-type'] == 'application/x-npy' and r.headers['x-seeds'] == '7,8,9'
    pixels = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(pixels, np.stack([decode(p['b64']) for p in pngs]))
    one = api.post('/v1/generate', json={'class_label': 4, 'seed': 8, 'format': 'npy'}).json()['images'][0]   # in JSON: per image
    np.testing.assert_array_equal(np.load(io.BytesIO(base64.b64decode(one['b64']))), pixels[1])


@pytest.mark.parametrize('module,step', [('serve.generation', '_encode_chunk')])
def test_host_work_never_blocks_the_event_loop(class_bundle_dir, monkeypatch, module, step):
    """Hold one request's image encoding still: /healthz must still answer, so that work is not
    on the event loop. (Had it been, the health check would wait for the release that only comes after it: the 60 s
    bound is a hang detector, not a speed limit.)"""
    import importlib
    import threading

    where = importlib.import_module(module)
    reached, release, real = threading.Event(), threading.Event(), getattr(where, step)

    def held(*args):
        reached.set()
        release.wait(120)
        return real(*args)
    with in_process(class_bundle_dir) as api, concurrent.futures.ThreadPoolExecutor(2) as pool:
        monkeypatch.setattr(where, step, held)           # after start-up: the warm-up draws noise too
        try:
            generating = pool.submit(api.post, '/v1/generate', json={'n': 4, 'seed': 1})
            assert reached.wait(60), f'the request never reached {step}'
            health = pool.submit(api.get, '/healthz')
            assert health.result(timeout=60).status_code == 200
            assert not generating.done()          # answered while the work was still held
        finally:
            release.set()
        assert generating.result(timeout=60).status_code == 200


def test_a_lone_thumbnail_is_encoded_on_the_loop_and_more_in_the_pool(class_bundle_dir, monkeypatch):
    """One 32x32 image (3 KB) costs less to encode than a trip through the pool, so it stays on the loop; four go to
    the pool (the structural test above holds them there). With the pool refusing work, only the lone image gets out."""
    from serve import generation

    class NoPool(concurrent.futures.Executor):
        def submit(self, fn, *args, **kwargs):
            raise RuntimeError('the encode pool was used')
    with in_process(class_bundle_dir) as api:
        monkeypatch.setattr(generation, 'ENCODE_POOL', NoPool())
        for fmt, response in [('png', 'b64'), ('png', 'binary'), ('npy', 'binary')]:
            assert api.post('/v1/generate', json={'seed': 1, 'format': fmt, 'response': response}).status_code == 200
            with pytest.raises(RuntimeError, match='encode pool'):      # the test client re-raises the server's error
                api.post('/v1/generate', json={'n': 4, 'seed': 1, 'format': fmt, 'response': response})


def test_openai_images_endpoint(api):
    r = api.post('/v1/images/generations', json={'prompt': 'ship', 'n': 2, 'size': '32x32', 'response_format': 'b64_json'})
    assert r.status_code == 200
    data = r.json()['data']
    assert len(data) == 2 and data[0]['revised_prompt'] == 'ship' and decode(data[0]['b64_json']).shape == (32, 32, 3)


@pytest.mark.parametrize('payload,status,fragment', [
    ({'class_name': 'unicorn'}, 400, 'unknown class'),
    ({'class_label': 99}, 400, 'out of range'),
    ({'n': 0}, 422, 'n:'),
    ({'n': 1000}, 400, 'over this server'),
    ({'seed': -1}, 422, 'seed'),
    ({'seed': 2 ** 64}, 422, 'seed'),
    ({'prompt': 'a cat'}, 400, 'takes no prompt'),
    ({'n': 'three'}, 422, 'n:'),
    ({'colour': 'blue'}, 422, 'colour'),
    ({'model': 'nope'}, 404, 'unknown model'),
    ({'format': 'gif'}, 422, 'format'),
    ({'class_label': 3, 'class_name': 'dog'}, 422, 'give one of class_label and class_name'),
    ({'seed': '0-3'}, 422, "one integer (image i of the request uses seed + i), not a string such as '0-3'"),
])
def test_bad_input_gets_a_4xx_with_a_message(api, payload, status, fragment):
    r = api.post('/v1/generate', json=payload)
    assert r.status_code == status, r.text
    assert fragment in r.json()['error']['message'] and 'Traceback' not in r.text


@pytest.mark.parametrize('path,payload,param', [
    ('/v1/generate', {'class_name': 'unicorn'}, 'class_name'), ('/v1/generate', {'class_label': 99}, 'class_label'),
    ('/v1/generate', {'seed': 2 ** 63 - 1, 'n': 2}, 'seed'), ('/v1/generate', {'n': 1000}, 'n'),
    ('/v1/images/generations', {'prompt': 'unicorn'}, 'prompt'),      # there the class name is the prompt
])
def test_an_error_names_the_field_at_fault(api, path, payload, param):
    r = api.post(path, json=payload)
    assert r.status_code == 400 and r.json()['error']['param'] == param, r.text


def test_a_body_that_is_not_a_json_object_is_told_so(api):
    r = api.post('/v1/generate', content=b'{"class_name": "cat"}', headers={'content-type': 'application/x-www-form-urlencoded'})
    assert r.status_code == 422 and 'sent as Content-Type: application/json' in r.json()['error']['message']
    assert 'no body' in api.post('/v1/generate').json()['error']['message']
    assert api.post('/v1/generate', json=[1, 2]).json()['error']['message'] == 'the body must be a JSON object'


def test_malformed_requests(api):
    r = api.post('/v1/generate', content=b'{"n": ', headers={'content-type': 'application/json'})
    assert r.status_code == 422 and r.json()['error']['code'] == 'invalid_request'
    r = api.post('/v1/generate', content=b'n=1', headers={'content-type': 'application/x-www-form-urlencoded'})
    assert r.status_code == 422
    r = api.post('/v1/generate', content=b'{"prompt": "' + b'x' * 200_000 + b'"}', headers={'content-type': 'application/json'})
    assert r.status_code == 413 and r.json()['error']['code'] == 'payload_too_large'
    r = api.post('/v1/images/generations', json={'prompt': 'cat', 'size': '64x64'})
    assert r.status_code == 400 and '32x32' in r.json()['error']['message']
    assert api.get('/nowhere').json()['error']['code'] == 'not_found'
    assert api.post('/v1/generate', json={'seed': 3}).status_code == 200       # still serving


def test_concurrent_requests_are_batched(api):
    def counts():
        lines = api.get('/metrics').text.splitlines()
        # a labelled series appears with its first batch: none yet when this test runs first on its worker
        value = lambda prefix: sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))
        return value('sida_batch_size_count'), value('sida_images_total')
    calls_before, images_before = counts()

    def one(i):   # one image per request: more images than backend calls only if requests were coalesced
        return api.post('/v1/generate', json={'seed': i, 'n': 1}).status_code
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(32))) == {200}
    calls, images = counts()
    assert images - images_before == 32 and calls - calls_before < 32


def test_api_keys_and_rate_limit(class_bundle_dir):
    with in_process(class_bundle_dir, api_keys=['sekrit'], rate_limit_per_minute=3, warmup=False) as c:
        r = c.post('/v1/generate', json={'seed': 1})
        assert r.status_code == 401 and r.json()['error']['code'] == 'unauthorized' and r.headers['WWW-Authenticate'] == 'Bearer'
        assert c.get('/v1/models', headers={'Authorization': 'Bearer wrong'}).status_code == 401
        auth = {'Authorization': 'Bearer sekrit'}
        codes = [c.post('/v1/generate', json={'seed': 1}, headers=auth).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[-1] == 429
        r = c.post('/v1/generate', json={'seed': 1}, headers=auth)
        assert r.status_code == 429 and int(r.headers['Retry-After']) >= 1
        assert c.get('/healthz').status_code == 200


def test_full_queue_answers_429_with_retry_after(class_bundle_dir):
    with in_process(class_bundle_dir, max_queue_images=4, max_batch=4, max_n=4, max_delay_ms=50) as c:
        def one(i):
            r = c.post('/v1/generate', json={'seed': i, 'n': 4})
            return r.status_code, r.headers.get('Retry-After')
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(24)))
        codes = [code for code, _ in results]
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
        assert all(ra is not None for code, ra in results if code == 429)
        assert c.post('/v1/generate', json={'seed': 1}).status_code == 200


def test_a_request_larger_than_the_queue_is_a_400_not_a_retry(class_bundle_dir):
    with in_process(class_bundle_dir, max_queue_images=4, max_n=8, warmup=False) as c:
        r = c.post('/v1/generate', json={'seed': 1, 'n': 8})
        assert r.status_code == 400 and 'never fit' in r.json()['error']['message'] and 'Retry-After' not in r.headers
        assert c.post('/v1/generate', json={'seed': 1, 'n': 4}).status_code == 200


def test_without_gradio_the_api_runs_without_the_page_and_says_so_once(class_bundle_dir, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, 'gradio', None)            # as if the [ui] extra were not installed
    monkeypatch.delitem(sys.modules, 'ui.mount', raising=False)
    with caplog.at_level('WARNING', logger='sida.serve'), in_process(class_bundle_dir, ui=True, warmup=False) as c:
        assert c.app.state.ui is False and c.get('/ui/').status_code == 404
        assert c.post('/v1/generate', json={'seed': 1}).status_code == 200
    [line] = [r.getMessage() for r in caplog.records if 'ui_disabled' in r.getMessage()]
    assert 'gradio' in line and 'pip install sida[ui]' in line


def test_the_openapi_schema_names_every_route_and_the_version(api):
    import sida
    spec = api.get('/openapi.json').json()
    assert spec['info']['version'] == sida.__version__
    assert {path: sorted(ops) for path, ops in spec['paths'].items()} == {
        '/healthz': ['get'], '/readyz': ['get'], '/metrics': ['get'], '/v1/models': ['get'], '/v1/models/{model_id}': ['get'],
        '/v1/generate': ['post'],
        '/v1/images/generations': ['post']}
    generate = spec['paths']['/v1/generate']['post']
    assert generate['operationId'] == 'generate_v1_generate_post'
    assert set(generate['responses']) == {'200', '400', '401', '404', '413', '422', '429', '503'}
