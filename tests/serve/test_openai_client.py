"""The official `openai` client against the real app (in-process: the TestClient is the client's httpx transport)."""

import base64
import io

import pytest
from PIL import Image

from tests.serve.conftest import in_process

openai = pytest.importorskip('openai', reason='the openai client (dev extra) is not installed')


@pytest.fixture(scope='module')
def client(class_bundle_dir):
    with in_process(class_bundle_dir, warmup=False, api_keys=['sekrit']) as http:
        yield openai.OpenAI(base_url='http://testserver/v1', api_key='sekrit', http_client=http, max_retries=0)


def test_models_list_and_retrieve(client):
    [listed] = client.models.list().data
    model = client.models.retrieve('demo-untrained-ddpmpp')
    assert listed.id == model.id == 'demo-untrained-ddpmpp'
    assert model.object == 'model' and model.owned_by == 'sida' and model.created > 1_600_000_000
    with pytest.raises(openai.NotFoundError, match='unknown model'):
        client.models.retrieve('nope')


@pytest.mark.parametrize('fmt,pil', [('png', 'PNG'), ('jpeg', 'JPEG'), ('webp', 'WEBP')])
def test_images_generate_in_each_output_format(client, fmt, pil):
    extra = {} if fmt == 'png' else {'output_compression': 50}
    result = client.images.generate(model='demo-untrained-ddpmpp', prompt='ship', n=2, size='32x32', output_format=fmt,
                                    response_format='b64_json', **extra)
    assert len(result.data) == 2 and result.data[0].revised_prompt == 'ship' and result.output_format == fmt
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.format == pil and image.size == (32, 32)


def test_errors_reach_the_client_as_its_exceptions(client):
    with pytest.raises(openai.BadRequestError, match='unknown class') as e:
        client.images.generate(model='demo-untrained-ddpmpp', prompt='unicorn')
    assert e.value.code == 'invalid_request' and e.value.type == 'invalid_request_error'
    with pytest.raises(openai.BadRequestError, match='not available') as e:
        client.images.generate(prompt='ship', size='1024x1024')
    assert e.value.param == 'size'
    with pytest.raises(openai.UnprocessableEntityError, match='n:') as e:
        client.images.generate(prompt='ship', n=0)
    assert e.value.param == 'n'
    bad_key = client.with_options(api_key='wrong')
    with pytest.raises(openai.AuthenticationError, match='API key') as e:
        bad_key.models.list()
    assert e.value.type == 'authentication_error'
