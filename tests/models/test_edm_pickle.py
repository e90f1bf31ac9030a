import os
import pickle
import sys
import types

import pytest
import torch

from models.architecture import build_denoiser
from models.edm_pickle import UnsafePickleError, load_edm_pickle, restricted_load
from models.teacher_loader import load_teacher
from tests.conftest import perturb_, tiny_adm, tiny_ddpmpp, tiny_ncsnpp
from tests.models.edm_format import write_edm_pickle, write_sida_pickle


def _reference(spec):
    return perturb_(build_denoiser(spec)).eval()


@pytest.mark.parametrize('make,precond', [(tiny_ddpmpp, 'EDMPrecond'), (tiny_ncsnpp, 'VPPrecond'),
                                          (tiny_ncsnpp, 'VEPrecond'), (tiny_adm, 'EDMPrecond')])
def test_edm_pickle_loads_into_our_classes_with_identical_outputs(tmp_path, make, precond):
    spec = make()
    spec['precond'] = precond
    spec['precond_kwargs'] = {'EDMPrecond': {'sigma_data': 0.5}, 'VPPrecond': {'beta_d': 19.9}, 'VEPrecond': {'sigma_max': 100.0}}[precond]
    net = _reference(spec)
    write_edm_pickle(tmp_path / 'net.pkl', net, spec)
    loaded, loaded_spec = load_edm_pickle(tmp_path / 'net.pkl')
    assert type(loaded).__name__ == precond
    expected = {**spec, 'network_kwargs': {k: v for k, v in spec['network_kwargs'].items() if k != 'text_dim'}}
    assert loaded_spec == expected   # EDM's recorded constructor kwargs map back to our spec exactly
    kw = spec['network_kwargs']
    x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.02, 1.0, 30.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), kw['label_dim']).float() if kw['label_dim'] else None
    assert torch.equal(loaded(x, sigma, labels), net(x, sigma, labels))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_load_teacher_reads_pickles_and_bundles(tmp_path):
    spec = tiny_ddpmpp()
    net = _reference(spec)
    write_edm_pickle(tmp_path / 'net.pkl', net, spec)
    teacher, _ = load_teacher(tmp_path / 'net.pkl')
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(teacher(x, torch.tensor([1.0])), net(x, torch.tensor([1.0])))
    with pytest.raises(FileNotFoundError, match='not a teacher'):
        load_teacher(tmp_path)


class _RunsShell:
    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickle_with_a_foreign_callable_is_refused_without_running_it(tmp_path):
    evil = _RunsShell()
    evil.marker = tmp_path / 'pwned'
    with open(tmp_path / 'evil.pkl', 'wb') as f:
        pickle.dump({'ema': evil}, f)
    with pytest.raises(UnsafePickleError, match='refusing to load global'):
        load_edm_pickle(tmp_path / 'evil.pkl')
    assert not evil.marker.exists()


def test_persistent_object_of_an_unknown_class_is_refused(tmp_path):
    spec = tiny_ddpmpp()
    write_edm_pickle(tmp_path / 'odd.pkl', _reference(spec), spec, class_name_override='Backdoor')
    with pytest.raises(UnsafePickleError, match="persistent class 'Backdoor'"):
        load_edm_pickle(tmp_path / 'odd.pkl')


def test_embedded_module_source_is_never_executed(tmp_path):
    marker = tmp_path / 'executed'
    spec = tiny_ddpmpp()
    net = _reference(spec)
    write_edm_pickle(tmp_path / 'net.pkl', net, spec, module_src=f'open({str(marker)!r}, "w").close()\n')
    loaded, _ = load_edm_pickle(tmp_path / 'net.pkl')
    assert not marker.exists()
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(loaded(x, torch.tensor([1.0])), net(x, torch.tensor([1.0])))


def test_pickle_without_a_network_says_what_it_found(tmp_path):
    with open(tmp_path / 'empty.pkl', 'wb') as f:
        pickle.dump({'loss_fn': 1}, f)
    with pytest.raises(ValueError, match="no network under 'ema'"):
        load_edm_pickle(tmp_path / 'empty.pkl')


# SiDA snapshots (the authors' sida_training code): EDMPrecond_EncoderDecoder around *_EncoderDecoder UNets.

def _sida_expected_spec(spec):
    """What the loader should report: our classes, the kwargs SiDA recorded (sigma_data left at its default)."""
    return {**spec, 'precond_kwargs': {},
            'network_kwargs': {k: v for k, v in spec['network_kwargs'].items() if k != 'text_dim'}}


@pytest.mark.parametrize('make', [tiny_ddpmpp, tiny_adm])
def test_sida_snapshot_loads_into_our_classes_with_its_weights_and_outputs(tmp_path, make):
    marker = tmp_path / 'executed'
    spec = make()
    net = _reference(spec)
    write_sida_pickle(tmp_path / 'sida.pkl', net, spec, module_src=f'open({str(marker)!r}, "w").close()\n')
    with open(tmp_path / 'sida.pkl', 'rb') as f:   # the file really is in SiDA's format
        data = restricted_load(f)
    assert sorted(data) == ['ema'] and data['ema'].class_name == 'EDMPrecond_EncoderDecoder'
    assert data['ema'].state['_modules']['model'].class_name == f'{spec["network"]}_EncoderDecoder'
    assert data['ema'].state['_init_kwargs']['model_type'] == f'{spec["network"]}_EncoderDecoder'

    loaded, loaded_spec = load_edm_pickle(tmp_path / 'sida.pkl')
    assert not marker.exists()
    assert (type(loaded).__name__, type(loaded.model).__name__) == ('EDMPrecond', spec['network'])
    assert loaded_spec == _sida_expected_spec(spec)
    expected, got = net.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    kw = spec['network_kwargs']
    x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.02, 1.0, 2.5])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), kw['label_dim']).float() if kw['label_dim'] else None
    # SiDA's return_flag decoder / encoder / encoder_decoder is our output= denoised / bottleneck / both
    for output in ('denoised', 'bottleneck', 'both'):
        a, b = loaded(x, sigma, labels, output=output), net(x, sigma, labels, output=output)
        assert all(torch.equal(p, q) for p, q in zip(*((a, b) if output == 'both' else ((a,), (b,)))))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_sida_snapshot_is_a_teacher_through_the_distill_entry_point(tmp_path):
    # what `sida train distill --teacher X.pkl` calls
    from train.launch import load_teacher_any
    spec = tiny_ddpmpp()
    net = _reference(spec)
    write_sida_pickle(tmp_path / 'network-snapshot-1.000000-000500.pkl', net, spec)
    teacher, loaded_spec, condition = load_teacher_any(tmp_path / 'network-snapshot-1.000000-000500.pkl', 'cpu')
    assert loaded_spec == _sida_expected_spec(spec) and condition is None
    build_denoiser(loaded_spec)   # the spec is plain JSON our builder takes, as a bundle would store it
    x, labels = torch.randn(2, 3, 16, 16), torch.eye(10)[:2]
    assert torch.equal(teacher(x, torch.tensor([2.5]), labels), net(x, torch.tensor([2.5]), labels))


@pytest.mark.parametrize('name', ['EDM_2_Precond_EncoderDecoder', 'SongUNet_EncoderDecoder_Evil'])
def test_sida_snapshot_naming_another_class_is_refused_in_one_line(tmp_path, name):
    spec = tiny_ddpmpp()
    write_sida_pickle(tmp_path / 'odd.pkl', _reference(spec), spec, class_name_override=name)
    with pytest.raises(UnsafePickleError, match=f"persistent class '{name}': not one of the known") as e:
        load_edm_pickle(tmp_path / 'odd.pkl')
    assert '\n' not in str(e.value) and str(tmp_path / 'odd.pkl') in str(e.value)


def test_a_sida_class_named_as_a_plain_global_is_still_refused(tmp_path, monkeypatch):
    """SiDA's classes are accepted only as persistence records (class name + state, never run); a pickle that
    names one as an importable global would make the unpickler call it, so that stays refused."""
    module = types.ModuleType('sida_training.sida_networks')
    cls = type('EDMPrecond_EncoderDecoder', (), {'__module__': module.__name__})
    module.EDMPrecond_EncoderDecoder = cls
    monkeypatch.setitem(sys.modules, 'sida_training', types.ModuleType('sida_training'))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    (tmp_path / 'global.pkl').write_bytes(pickle.dumps({'ema': cls()}, protocol=4))
    with pytest.raises(UnsafePickleError, match='refusing to load global sida_training.sida_networks.EDMPrecond_EncoderDecoder'):
        load_edm_pickle(tmp_path / 'global.pkl')
