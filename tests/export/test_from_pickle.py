"""`sida export from-pickle`: a one-step generator from the SiD / SiDA authors' code becomes a bundle that serves."""

import json

import pytest
import torch
from click.testing import CliRunner

from export.cli import export
from models.architecture import build_denoiser
from models.bundle import load_bundle
from models.seeds import noise_for_seeds
from tests.conftest import perturb_, tiny_ddpmpp
from tests.models.edm_format import write_edm_pickle, write_sida_pickle


def sida(*args):
    """`sida export from-pickle ARGS` in this process (exit code, stdout and stderr as a user sees them)."""
    result = CliRunner().invoke(export, ['from-pickle', *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info   # no crash, only exits
    result.returncode = result.exit_code
    return result


@pytest.fixture(scope='module')
def network():
    spec = tiny_ddpmpp(label_dim=10)
    spec['precond'], spec['precond_kwargs'] = 'EDMPrecond', {'sigma_data': 0.5}
    torch.manual_seed(0)
    return perturb_(build_denoiser(spec)).eval(), spec


@pytest.mark.parametrize('writer', [write_sida_pickle, write_edm_pickle])
def test_the_bundle_generates_what_the_pickled_network_does_at_init_sigma(network, tmp_path, writer):
    net, spec = network
    writer(tmp_path / 'network-snapshot.pkl', net, spec)
    result = sida(str(tmp_path / 'network-snapshot.pkl'), '--out', str(tmp_path / 'bundle'), '--labels', 'cifar10',
                  '--init-sigma', '2.5', '--name', 'sida-cifar10')
    assert result.returncode == 0, result.output
    bundle = load_bundle(tmp_path / 'bundle', return_float=True)
    config = bundle.config
    assert config.name == 'sida-cifar10' and config.init_sigma == 2.5 and config.condition['labels'][3] == 'cat'
    assert config.provenance['method'] == 'imported' and config.provenance['source'] == 'network-snapshot.pkl'
    noise, labels = noise_for_seeds([0, 1, 2], (3, 16, 16)), torch.tensor([0, 3, 9])
    with torch.no_grad():
        expected = net(2.5 * noise, 2.5, class_labels=torch.nn.functional.one_hot(labels, 10).float())
        images, x = bundle.generator(noise, labels)
    torch.testing.assert_close(x, expected.clamp(-1, 1), atol=1e-5, rtol=0)
    assert images.dtype == torch.uint8 and images.shape == (3, 16, 16, 3)


def test_bad_input_is_one_line_and_a_nonzero_exit(network, tmp_path):
    net, spec = network
    write_sida_pickle(tmp_path / 'g.pkl', net, spec)
    cases = [(['--labels', 'cat,dog'], 'the network has 10 classes; --labels names 2', 2),
             (['--init-sigma', '0'], '--init-sigma must be positive', 2),
             (['--key', 'G'], "no network under 'G'", 1)]
    for extra, words, code in cases:
        result = sida(str(tmp_path / 'g.pkl'), '--out', str(tmp_path / 'b'), *extra)
        assert result.returncode == code and words in result.stderr and 'Traceback' not in result.stderr, result.stderr
    (tmp_path / 'junk.pkl').write_bytes(b'not a pickle at all')
    result = sida(str(tmp_path / 'junk.pkl'), '--out', str(tmp_path / 'b'))
    assert result.returncode == 1 and 'junk.pkl' in result.stderr and 'Traceback' not in result.stderr, result.stderr
    assert not (tmp_path / 'b' / 'config.json').exists()


def test_a_pickle_that_names_another_class_is_refused(network, tmp_path):
    net, spec = network
    write_sida_pickle(tmp_path / 'evil.pkl', net, spec, class_name_override='SongUNet_EncoderDecoder_Evil')
    result = sida(str(tmp_path / 'evil.pkl'), '--out', str(tmp_path / 'b'))
    assert result.returncode == 1 and 'refusing persistent class' in result.stderr, result.stderr
    assert json.dumps(result.stderr).count('\\n') <= 2                       # one line
