"""Classifier-free guidance for `sida train distill --guidance` and the label dropout (`sida train teacher
--label-dropout`) that makes a teacher guidable, on tiny CPU networks."""

import copy
import json

import pytest
import torch

from models.architecture import build_denoiser
from models.bundle import load_bundle, save_bundle
from models.generator import OneStepGenerator
from tests.conftest import perturb_, sida_in_process, tiny_ddpmpp, tiny_ncsnpp
from tests.train.conftest import CLASSES
from tests.train.test_cli import TINY
from train.batches import LabelBatches
from train.distill import DistillConfig, Distiller
from train.guidance import ClassifierFreeGuidance

BATCH = 4


def calls_of(net):
    """The (x, sigma, tensor kwargs) of every call of `net`, recorded by a forward pre-hook."""
    calls = []
    net.register_forward_pre_hook(lambda m, args, kw: calls.append((*args[:2], {k: v for k, v in kw.items() if torch.is_tensor(v)})),
                                  with_kwargs=True)
    return calls


def test_guidance_1_is_the_conditional_prediction_and_2_steps_as_far_again_from_the_unconditional():
    net = perturb_(build_denoiser(tiny_ddpmpp())).eval()          # class labels and augment labels
    x, sigma = torch.randn(BATCH, 3, 16, 16), torch.tensor([0.1, 1.0, 3.0, 20.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 5, 9]), 10).float()
    augment = torch.randn(BATCH, 9)
    with torch.no_grad():
        cond = net(x, sigma, class_labels=labels, augment_labels=augment)
        uncond = net(x, sigma, class_labels=torch.zeros_like(labels), augment_labels=augment)
        assert (cond - uncond).abs().max() > 1e-2                  # the labels matter, so kappa must show
        torch.testing.assert_close(ClassifierFreeGuidance(net, 1)(x, sigma, class_labels=labels, augment_labels=augment), cond)
        calls = calls_of(net)
        guided = ClassifierFreeGuidance(net, 2)(x, sigma, class_labels=labels, augment_labels=augment)
    torch.testing.assert_close(guided, 2 * cond - uncond, rtol=1e-5, atol=1e-5)
    (seen_x, seen_sigma, seen), = calls                             # one batched pass: conditional half, then unconditional
    assert torch.equal(seen_x, torch.cat([x, x])) and torch.equal(seen_sigma, torch.cat([sigma, sigma]))
    assert torch.equal(seen['class_labels'], torch.cat([labels, torch.zeros_like(labels)]))
    assert torch.equal(seen['augment_labels'], torch.cat([augment, augment]))


def test_text_guidance_zeroes_the_embeddings_of_the_unconditional_half_only():
    net = perturb_(build_denoiser(tiny_ddpmpp(label_dim=0, text_dim=8, augment_dim=0))).eval()
    x, text = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 8)
    calls = calls_of(net)
    with torch.no_grad():
        guided = ClassifierFreeGuidance(net, 3)(x, 2.5, text_embeds=text)       # a scalar sigma, too
        cond, uncond = net(x, 2.5, text_embeds=text), net(x, 2.5, text_embeds=torch.zeros_like(text))
    torch.testing.assert_close(guided, uncond + 3 * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert torch.equal(calls[0][2]['text_embeds'], torch.cat([text, torch.zeros_like(text)]))


def test_guidance_needs_a_condition_and_a_scale_of_at_least_one():
    net = build_denoiser(tiny_ncsnpp()).eval()
    with pytest.raises(ValueError, match='needs a condition'):
        ClassifierFreeGuidance(net, 2)(torch.randn(1, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match='guidance'):
        DistillConfig(guidance=0.5)


def make_distiller(guidance):
    torch.manual_seed(0)
    teacher = perturb_(build_denoiser(tiny_ddpmpp(augment_dim=0, attn_resolutions=())), scale=0.02).eval()
    cfg = DistillConfig(method='sid', batch=BATCH, lr_g=1e-4, lr_psi=1e-4, guidance=guidance)
    return Distiller(cfg, teacher, copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher).requires_grad_(True),
                     LabelBatches(10, BATCH, 0, 0, 1, 'cpu'), (3, 16, 16))


def test_the_distiller_guides_the_teacher_in_the_generator_loss_and_never_the_fake_score():
    d = make_distiller(guidance=2)
    teacher_calls, fake_calls = calls_of(d.teacher), calls_of(d.fake)
    guided = d.iteration()
    (x, _, kw), = teacher_calls                                     # the generator step's one (batched) teacher pass
    assert x.shape[0] == 2 * BATCH and kw['class_labels'][:BATCH].sum() == BATCH and not kw['class_labels'][BATCH:].any()
    assert len(fake_calls) == 2 and all(x.shape[0] == BATCH and kw['class_labels'].sum() == BATCH for x, _, kw in fake_calls)
    plain = make_distiller(guidance=1)
    calls = calls_of(plain.teacher)
    unguided = plain.iteration()
    assert calls[0][0].shape[0] == BATCH
    assert unguided['loss_psi'] == guided['loss_psi']               # the same fake-score step, seed for seed ...
    assert unguided['loss_g'] != pytest.approx(guided['loss_g'])    # ... but another teacher in the generator loss


def teacher_bundle(path, **kw):
    spec = tiny_ddpmpp(augment_dim=0, attn_resolutions=(), **kw)
    condition = {'kind': 'class', 'labels': CLASSES} if spec['network_kwargs']['label_dim'] else {'kind': 'none'}
    save_bundle(path, OneStepGenerator(perturb_(build_denoiser(spec), 0.02)), name='teacher', architecture=spec,
                condition=condition, provenance={'method': 'edm-teacher'})
    return path


@pytest.mark.parametrize('teacher, fragment', [
    ({}, 'was trained without label dropout, so it has not learned the unconditional score; (re)train or warm-restart it '
         'with `sida train teacher --label-dropout 0.1 --init-from'),
    ({'label_dim': 0}, 'is unconditional'),
])
def test_guidance_is_refused_for_a_teacher_that_cannot_be_guided(tmp_path, teacher, fragment):
    path = teacher_bundle(tmp_path / 'teacher', **teacher)
    r = sida_in_process('train', 'distill', '--method', 'sid', '--teacher', path, '--out', tmp_path / 'run', '--guidance', '2',
                        '--images', '4', '--batch', '4')
    assert r.returncode != 0 and fragment in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'run' / 'bundle').exists()


def test_a_guided_distillation_records_its_guidance_and_its_student_drops_no_labels(cifar_subset, tmp_path, monkeypatch):
    teacher = teacher_bundle(tmp_path / 'teacher', label_dropout=0.1)
    dropouts = []
    iteration = Distiller.iteration

    def recording(self):                                           # the networks as they train, every iteration
        dropouts.append({name: {m.label_dropout for m in net.modules() if hasattr(m, 'label_dropout')}
                         for name, net in (('teacher', self.teacher), ('G', self.G), ('fake', self.fake))})
        return iteration(self)
    monkeypatch.setattr(Distiller, 'iteration', recording)
    run = tmp_path / 'run'
    r = sida_in_process('train', 'distill', '--method', 'sid', '--teacher', teacher, '--out', run, '--guidance', '2',
                        '--images', '8', '--batch', '4', '--sample-every', '8', '--log-every', '4')
    assert r.returncode == 0, r.stderr
    assert dropouts and all(d == {'teacher': {0.1}, 'G': {0}, 'fake': {0}} for d in dropouts), dropouts
    assert json.loads((run / 'config.json').read_text())['distill']['guidance'] == 2.0
    student = load_bundle(run / 'bundle')
    assert student.config.provenance['hyperparameters']['guidance'] == 2.0
    assert 'label_dropout' not in student.config.architecture['network_kwargs']
    assert student.generator.denoiser.model.label_dropout == 0
    # SiD2A refines that student: its architecture is the teacher's but for the label dropout it never trained with.
    r = sida_in_process('train', 'distill', '--method', 'sid2a', '--teacher', teacher, '--generator', run / 'bundle',
                        '--data', cifar_subset, '--out', tmp_path / 'sid2a', '--guidance', '2', '--images', '4', '--batch', '4',
                        '--g-warmup', '0', '--sample-every', '1000M')
    assert r.returncode == 0, r.stderr
    # a resume is the checkpointed run: it keeps its guidance, it cannot switch it off midway
    resume = ['train', 'distill', '--method', 'sid', '--teacher', teacher, '--out', run, '--resume', 'auto',
              '--images', '12', '--batch', '4', '--sample-every', '1000M']
    r = sida_in_process(*resume, '--guidance', '1')
    assert r.returncode == 1 and 'the run being resumed trains with --guidance 2.0' in r.stderr, r.stderr
    r = sida_in_process(*resume, '--guidance', '2')
    assert r.returncode == 0 and 'resumed from' in r.stderr + r.stdout, r.stderr


def test_label_dropout_lands_in_the_teacher_bundle_and_a_warm_restart_may_add_it(cifar_subset, tmp_path):
    common = ['--data', cifar_subset, '--batch', '8', '--log-every', '8', '--sample-every', '1000M',
              '--checkpoint-every', '1000M', '--images', '8']
    r = sida_in_process('train', 'teacher', '--out', tmp_path / 'plain', *common, *TINY)
    assert r.returncode == 0, r.stderr
    assert 'label_dropout' not in load_bundle(tmp_path / 'plain' / 'bundle').config.architecture['network_kwargs']
    r = sida_in_process('train', 'teacher', '--out', tmp_path / 'guidable', '--label-dropout', '0.1',
                        '--init-from', tmp_path / 'plain' / 'bundle', *common, *TINY)
    assert r.returncode == 0, r.stderr
    assert load_bundle(tmp_path / 'guidable' / 'bundle').config.architecture['network_kwargs']['label_dropout'] == 0.1
    assert json.loads((tmp_path / 'guidable' / 'config.json').read_text())['architecture']['network_kwargs']['label_dropout'] == 0.1
    wider = ['--model-channels', '32', *TINY[2:]]
    r = sida_in_process('train', 'teacher', '--out', tmp_path / 'wider', '--label-dropout', '0.2', '--init-from',
                        tmp_path / 'guidable' / 'bundle', *common, *wider)
    assert r.returncode == 1 and 'another architecture (network_kwargs.model_channels 32 here, 16 there)' in r.stderr, r.stderr

    # continued without the option, a guidable teacher stays guidable (the bundle's label dropout is inherited) ...
    r = sida_in_process('train', 'teacher', '--out', tmp_path / 'next', '--init-from', tmp_path / 'guidable' / 'bundle',
                        *common, *TINY)
    assert r.returncode == 0, r.stderr
    assert load_bundle(tmp_path / 'next' / 'bundle').config.architecture['network_kwargs']['label_dropout'] == 0.1
    # ... and a resume keeps its own run's (not its --init-from bundle's), refusing another
    resume = ['train', 'teacher', '--out', tmp_path / 'guidable', '--resume', 'auto', *common[:-1], '16', *TINY]
    r = sida_in_process(*resume, '--label-dropout', '0')
    assert r.returncode == 1 and 'the run being resumed trains with 0.1' in r.stderr, r.stderr
    r = sida_in_process(*resume)
    assert r.returncode == 0, r.stderr
    assert load_bundle(tmp_path / 'guidable' / 'bundle').config.architecture['network_kwargs']['label_dropout'] == 0.1


def test_label_dropout_needs_a_condition_to_drop(tmp_path):
    r = sida_in_process('train', 'teacher', '--data', tmp_path, '--out', tmp_path / 'x', '--cond', 'none',
                        '--label-dropout', '0.1', '--dry-run')
    errors = [line for line in r.stderr.splitlines() if line.startswith('Error')]
    assert r.returncode == 2 and errors == ['Error: --label-dropout drops the condition: a --cond none teacher has none'], r.stderr
