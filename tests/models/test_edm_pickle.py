import os
import pickle

import pytest
import torch

from models.architecture import build_denoiser
from models.edm_pickle import UnsafePickleError, load_edm_pickle
from models.teacher_loader import load_teacher
from tests.conftest import perturb_, tiny_adm, tiny_ddpmpp, tiny_ncsnpp
from tests.models.edm_format import write_edm_pickle


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
