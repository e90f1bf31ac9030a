"""The page's endpoints through gradio_client (the standalone `sida ui --api URL` and the /ui mounted in `sida serve`),
and its actions on the in-process API of a server with keys."""

import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.ui.conftest import CLASS_MODEL, TEXT_MODEL

gradio_client = pytest.importorskip('gradio_client', reason='the [ui] extra is not installed')


def test_standalone_ui_generates_through_the_api(standalone_ui, tmp_path):
    client = gradio_client.Client(f'{standalone_ui}/ui/', verbose=False, download_files=str(tmp_path))
    endpoints = client.view_api(print_info=False, return_format='dict')['named_endpoints']
    assert {'/generate', '/walk', '/walk_frame', '/compare'} <= set(endpoints)
    gallery, status, archive = client.predict(CLASS_MODEL, 'ship', '', 7, 3, '', api_name='/generate')
    assert [item['caption'] for item in gallery] == ['seed 7 · ship', 'seed 8 · ship', 'seed 9 · ship']
    first = Image.open(gallery[0]['image'])
    assert first.size == (32, 32) and first.text == {'model': CLASS_MODEL, 'seed': '7', 'class_name': 'ship'}
    assert 'backend `torch`' in status and 'round trip' in status
    with zipfile.ZipFile(archive) as z:       # the zip holds the API's PNG bytes unchanged
        assert z.namelist() == [f'{CLASS_MODEL}-seed{s}.png' for s in (7, 8, 9)]
        assert z.read(f'{CLASS_MODEL}-seed7.png') == open(gallery[0]['image'], 'rb').read()


def test_mounted_ui_walks_compares_and_reports_errors(server, tmp_path):
    client = gradio_client.Client(f'{server.url}/ui/', verbose=False, download_files=str(tmp_path))
    frames, status, _ = client.predict(CLASS_MODEL, 'random', '', 5, 6, 3, '', api_name='/walk')
    assert [f['caption'] for f in frames] == ['mix 0.00', 'mix 0.50', 'mix 1.00'] and '3 frames' in status
    middle, _ = client.predict(CLASS_MODEL, 'random', '', 5, 6, 0.5, '', api_name='/walk_frame')
    assert np.array_equal(np.asarray(Image.open(middle)), np.asarray(Image.open(frames[1]['image'])))
    image_a, image_b, status = client.predict(CLASS_MODEL, TEXT_MODEL, 'frog', 'a green frog', 11, '', api_name='/compare')
    assert Image.open(image_a).size == (32, 32) and Image.open(image_b).size == (16, 16)
    assert Image.open(image_b).text['prompt'] == 'a green frog' and CLASS_MODEL in status and TEXT_MODEL in status
    _, status, _ = client.predict(CLASS_MODEL, 'unicorn', '', 0, 1, '', api_name='/generate')
    assert status.startswith('**Error:**') and "unknown class 'unicorn'" in status and 'Traceback' not in status
    _, status, _ = client.predict('nope', 'random', '', 0, 1, '', api_name='/generate')
    assert "unknown model 'nope'" in status


def test_a_server_with_api_keys_needs_the_key_in_the_page(bundles):
    """The page's actions on the in-process API of a server with keys (the app's own event loop runs them)."""
    from tests.serve.conftest import in_process
    from ui.actions import Actions
    from ui.client import SidaApi
    with in_process(bundles[0], api_keys=['sekret'], warmup=False) as c:
        actions = Actions(SidaApi.in_process(c.app))
        with pytest.warns(UserWarning, match='invalid API key'):      # the page's toast (gr.Warning)
            _, status, _ = c.portal.call(actions.generate, CLASS_MODEL, 'cat', '', 0, 1, '')
        assert 'missing or invalid API key' in status and 'HTTP 401' in status
        gallery, status, _ = c.portal.call(actions.generate, CLASS_MODEL, 'cat', '', 0, 1, 'sekret')
        assert len(gallery) == 1 and 'round trip' in status
        assert Image.open(gallery[0][0]).text == {'model': CLASS_MODEL, 'seed': '0', 'class_name': 'cat'}
