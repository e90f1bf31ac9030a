"""The HTTP API against a real uvicorn server (subprocess), with httpx and Pillow."""

import base64
import concurrent.futures
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import Server


def decode(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_health_readiness_models_and_metrics(server):
    assert server.client.get('/healthz').json() == {'status': 'ok'}
    ready = server.client.get('/readyz')
    assert ready.status_code == 200 and ready.json()['ready']
    models = server.client.get('/v1/models').json()['data']
    assert models[0]['id'] == 'demo-untrained-ddpmpp' and models[0]['resolution'] == 32
    assert models[0]['condition'] == {'kind': 'class', 'labels': ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                                                                  'horse', 'ship', 'truck']}
    assert models[0]['backend'] == 'torch'
    server.client.post('/v1/generate', json={'n': 1, 'seed': 1})
    text = server.client.get('/metrics').text
    assert 'sida_requests_total' in text and 'sida_batch_size_bucket' in text and 'sida_request_seconds' in text
    assert server.client.get('/openapi.json').json()['info']['title'] == 'sida'


def test_generate_json_png_with_metadata_and_reproducible_seeds(server):
    r = server.client.post('/v1/generate', json={'class_name': 'Cat', 'n': 3, 'seed': 10})
    assert r.status_code == 200 and r.headers['X-Request-ID'] == r.json()['request_id']
    body = r.json()
    assert [i['seed'] for i in body['images']] == [10, 11, 12] and body['images'][0]['class_name'] == 'cat'
    image = Image.open(io.BytesIO(base64.b64decode(body['images'][0]['b64'])))
    assert image.size == (32, 32) and image.text['seed'] == '10' and image.text['class_name'] == 'cat'
    again = server.client.post('/v1/generate', json={'class_name': 'cat', 'n': 1, 'seed': 11}).json()
    assert np.abs(decode(again['images'][0]['b64']).astype(int) - decode(body['images'][1]['b64']).astype(int)).max() <= 1
    assert set(body['timings']) == {'queue_ms', 'generate_ms', 'total_ms'}


@pytest.mark.parametrize('fmt,media', [('png', 'image/png'), ('jpeg', 'image/jpeg'), ('webp', 'image/webp')])
def test_binary_responses(server, fmt, media):
    r = server.client.post('/v1/generate', json={'class_label': 2, 'seed': 0, 'format': fmt, 'response': 'binary'})
    assert r.status_code == 200 and r.headers['content-type'] == media
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    r = server.client.post('/v1/generate', json={'class_label': 2, 'seed': 0, 'n': 3, 'format': fmt, 'response': 'binary'})
    assert r.headers['content-type'] == 'application/zip'
    assert sorted(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == [f'seed{i}.{fmt}' for i in range(3)]


def test_openai_images_endpoint(server):
    r = server.client.post('/v1/images/generations', json={'prompt': 'ship', 'n': 2, 'size': '32x32', 'response_format': 'b64_json'})
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
])
def test_bad_input_gets_a_4xx_with_a_message(server, payload, status, fragment):
    r = server.client.post('/v1/generate', json=payload)
    assert r.status_code == status, r.text
    assert fragment in r.json()['error']['message'] and 'Traceback' not in r.text


def test_malformed_requests(server):
    r = server.client.post('/v1/generate', content=b'{"n": ', headers={'content-type': 'application/json'})
    assert r.status_code == 422 and r.json()['error']['code'] == 'invalid_request'
    r = server.client.post('/v1/generate', content=b'n=1', headers={'content-type': 'application/x-www-form-urlencoded'})
    assert r.status_code == 422
    r = server.client.post('/v1/generate', content=b'{"prompt": "' + b'x' * 200_000 + b'"}', headers={'content-type': 'application/json'})
    assert r.status_code == 413 and r.json()['error']['code'] == 'payload_too_large'
    def chunks():                      # no Content-Length: the limit is enforced while reading
        yield b'{"prompt": "'
        for _ in range(100):
            yield b'x' * 2000
        yield b'"}'
    r = server.client.post('/v1/generate', content=chunks(), headers={'content-type': 'application/json'})
    assert r.status_code == 413 and r.json()['error']['code'] == 'payload_too_large'
    r = server.client.post('/v1/images/generations', json={'prompt': 'cat', 'size': '64x64'})
    assert r.status_code == 400 and '32x32' in r.json()['error']['message']
    assert server.client.get('/nowhere').json()['error']['code'] == 'not_found'
    assert server.client.post('/v1/generate', json={'seed': 3}).status_code == 200       # still serving


def test_concurrent_requests_are_batched(server):
    def counts():
        lines = server.client.get('/metrics').text.splitlines()
        value = lambda prefix: float(next(line for line in lines if line.startswith(prefix)).split()[-1])
        return value('sida_batch_size_count'), value('sida_images_total')
    calls_before, images_before = counts()

    def one(i):   # one image per request: more images than backend calls only if requests were coalesced
        return server.client.post('/v1/generate', json={'seed': i, 'n': 1}).status_code
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(32))) == {200}
    calls, images = counts()
    assert images - images_before == 32 and calls - calls_before < 32


def test_api_keys_and_rate_limit(class_bundle_dir, tmp_path):
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--api-key', 'sekrit', '--rate-limit', '3', '--no-warmup',
               tmp_path=tmp_path)
    try:
        r = s.client.post('/v1/generate', json={'seed': 1})
        assert r.status_code == 401 and r.json()['error']['code'] == 'unauthorized'
        assert s.client.get('/v1/models', headers={'Authorization': 'Bearer wrong'}).status_code == 401
        auth = {'Authorization': 'Bearer sekrit'}
        codes = [s.client.post('/v1/generate', json={'seed': 1}, headers=auth).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[-1] == 429
        r = s.client.post('/v1/generate', json={'seed': 1}, headers=auth)
        assert r.status_code == 429 and int(r.headers['Retry-After']) >= 1
        assert s.client.get('/healthz').status_code == 200
    finally:
        s.stop()


def test_full_queue_answers_429_with_retry_after(class_bundle_dir, tmp_path):
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--max-queue-images', '4', '--max-batch', '4', '--max-n', '4',
               '--max-delay-ms', '50', tmp_path=tmp_path)
    try:
        def one(i):
            r = s.client.post('/v1/generate', json={'seed': i, 'n': 4})
            return r.status_code, r.headers.get('Retry-After')
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(24)))
        codes = [c for c, _ in results]
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
        assert all(ra is not None for c, ra in results if c == 429)
        assert s.client.post('/v1/generate', json={'seed': 1}).status_code == 200
    finally:
        s.stop()


def test_a_request_larger_than_the_queue_is_a_400_not_a_retry(class_bundle_dir, tmp_path):
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--max-queue-images', '4', '--max-n', '8', '--no-warmup',
               tmp_path=tmp_path)
    try:
        r = s.client.post('/v1/generate', json={'seed': 1, 'n': 8})
        assert r.status_code == 400 and 'never fit' in r.json()['error']['message'] and 'Retry-After' not in r.headers
        assert s.client.post('/v1/generate', json={'seed': 1, 'n': 4}).status_code == 200
    finally:
        s.stop()


def test_client_disconnect_cancels_the_work(class_bundle_dir, tmp_path):
    import json as _json
    import socket
    import time
    s = Server('--bundle', class_bundle_dir, '--backend', 'torch', '--max-delay-ms', '3000', '--no-warmup', tmp_path=tmp_path)
    try:
        body = _json.dumps({'seed': 1}).encode()
        with socket.create_connection(('127.0.0.1', s.port)) as sock:      # a client that gives up after 0.5 s
            sock.sendall(b'POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                         + f'Content-Length: {len(body)}\r\n\r\n'.encode() + body)
            time.sleep(0.5)
        time.sleep(4)
        text = s.client.get('/metrics').text
        assert 'sida_errors_total{code="client_disconnected"} 1.0' in text
        assert 'sida_images_total{' not in text           # the abandoned image was never generated
        assert s.client.post('/v1/generate', json={'seed': 2}).status_code == 200
    finally:
        s.stop()
