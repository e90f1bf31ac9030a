"""The demo page in a real browser (Debian's chromium through Playwright) against a real `sida serve` with /ui mounted."""

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.ui.conftest import CLASS_MODEL, TEXT_MODEL

pytest.importorskip('gradio', reason='the [ui] extra is not installed')
playwright = pytest.importorskip('playwright.sync_api', reason='playwright is not installed (the [dev] extra)')

CHROMIUM = Path('/usr/bin/chromium')
if not CHROMIUM.exists():
    pytest.skip(f'no browser: {CHROMIUM} is absent (apt-get install chromium)', allow_module_level=True)
BROWSER_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking']
TIMEOUT_MS = 30_000


@pytest.fixture(scope='module')
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={'width': 1200, 'height': 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f'{server.url}/ui/')
        page.wait_for_function(f"document.querySelector('#sida-model input')?.value === '{CLASS_MODEL}'")
        yield page
        browser.close()


def choose(page, dropdown, option):
    page.click(f'{dropdown} input')
    page.get_by_role('option', name=option, exact=True).click()
    page.wait_for_function(f"document.querySelector('{dropdown} input').value === '{option}'")


def gallery_images(page, gallery, count, name_part):
    """Wait until `gallery` shows `count` images whose file names contain name_part; return them as PIL images."""
    selector = f'{gallery} img[src*="{name_part}"]'
    page.wait_for_function(f"document.querySelectorAll('{selector}').length >= {count}")
    srcs = page.eval_on_selector_all(selector, 'images => images.map(i => i.src)')[:count]
    return [Image.open(io.BytesIO(httpx.get(src, timeout=10).content)) for src in srcs]


def assert_real_image(image, size):
    pixels = np.asarray(image.convert('RGB')).astype(float)
    assert image.size == (size, size) and pixels.std() > 1.0          # not blank


def test_class_then_text_model_generate_in_the_browser(page, server, tmp_path):
    choose(page, '#sida-class', 'cat')
    page.click('#sida-generate')
    for image in gallery_images(page, '#sida-gallery', 4, CLASS_MODEL):
        assert_real_image(image, 32)
        assert image.format == 'PNG' and image.text['model'] == CLASS_MODEL and image.text['class_name'] == 'cat'
    status = page.inner_text('#sida-status')
    assert 'torch' in status and 'server' in status and 'round trip' in status and 'ms' in status
    page.screenshot(path=tmp_path / 'class.png', full_page=True)

    choose(page, '#sida-model', TEXT_MODEL)
    prompt = page.locator('#sida-prompt textarea, #sida-prompt input').first
    prompt.wait_for(state='visible')
    assert not page.locator('#sida-class').is_visible()               # text models take a prompt, not a class
    prompt.fill('a red car')
    page.click('#sida-generate')
    for image in gallery_images(page, '#sida-gallery', 4, TEXT_MODEL):
        assert_real_image(image, 16)
        assert image.text['prompt'] == 'a red car'

    shot = tmp_path / 'ui.png'
    page.screenshot(path=shot, full_page=True)
    assert_real_screenshot(shot)


def assert_real_screenshot(path):
    image = Image.open(path)
    assert image.format == 'PNG' and image.width >= 1000 and image.height >= 800
    assert np.asarray(image.convert('L')).astype(float).std() > 5.0


def test_api_errors_are_readable_lines_not_tracebacks(page):
    choose(page, '#sida-model', TEXT_MODEL)
    page.locator('#sida-prompt textarea, #sida-prompt input').first.fill('')
    page.click('#sida-generate')
    page.wait_for_function("document.querySelector('#sida-status').innerText.includes('Error')")
    status = page.inner_text('#sida-status')
    assert 'give a prompt' in status and 'HTTP 400' in status and 'Traceback' not in page.content()


def test_live_mode_regenerates_when_the_seed_changes(page):
    choose(page, '#sida-model', CLASS_MODEL)
    page.check('#sida-live input')
    seed = page.locator('#sida-seed input')
    seed.fill('4242')
    seed.press('Tab')
    images = gallery_images(page, '#sida-gallery', 1, f'{CLASS_MODEL}-seed4242')         # no Generate click
    assert_real_image(images[0], 32)
    page.uncheck('#sida-live input')


def test_seed_walk_shows_frames_from_seed_a_to_seed_b(page):
    choose(page, '#sida-model', CLASS_MODEL)
    page.get_by_role('tab', name='Seed walk').click()
    page.click('#sida-walk-go')
    frames = gallery_images(page, '#sida-walk', 8, f'{CLASS_MODEL}-seed0-to1')
    names = [f'mix{m:.2f}' for m in (0, 1)]
    first, last = (gallery_images(page, '#sida-walk', 1, n)[0] for n in names)
    for image in frames:
        assert_real_image(image, 32)
    assert first.text['seed'] == '0' and first.text['seed_b'] == '1' and first.text['mix'] == '0.0'
    assert np.abs(np.asarray(first).astype(int) - np.asarray(last).astype(int)).max() > 1
    assert '8 frames' in page.inner_text('#sida-walk-status')
    # Scrubbing: moving the slider by keyboard regenerates the single frame at that mix.
    page.locator('#sida-mix input[type=range]').press('ArrowRight')
    page.wait_for_function("document.querySelector('#sida-walk-frame img')?.src.includes('mix0.51')")
