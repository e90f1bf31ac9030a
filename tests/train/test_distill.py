"""A few real SiD / SiDA steps on a tiny UNet and real CIFAR-10 images, on CPU."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from models.architecture import build_denoiser
from tests.conftest import perturb_, tiny_ddpmpp
from train import runner
from train.batches import ImageBatches, LabelBatches
from train.data import DataStream, ImageDataset
from train.distill import DistillConfig, Distiller, ema_beta

BATCH = 8


def make_distiller(data_dir, method='sid', seed=0, **overrides):
    torch.manual_seed(0)
    teacher = perturb_(build_denoiser(tiny_ddpmpp(dropout=0.0)), scale=0.02).eval()
    cfg = DistillConfig(method=method, batch=BATCH, lr_g=1e-4, lr_psi=1e-4, seed=seed, total_images=10 * BATCH, **overrides)
    if data_dir is None:
        batches = LabelBatches(10, BATCH, seed, 0, 1, 'cpu')
    else:
        dataset = ImageDataset(data_dir, resolution=16)
        batches = ImageBatches(DataStream(dataset, BATCH, seed=seed), 'cpu', label_dim=10)
    return Distiller(cfg, teacher, copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher).requires_grad_(True),
                     batches, (3, 16, 16))


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize('method', ['sid', 'sida'])
def test_a_few_steps_train_all_networks(cifar_subset, method):
    d = make_distiller(cifar_subset, method, g_warmup_images=0, gan_start_images=0)
    teacher0, g0, f0, ema0 = (flat(m) for m in (d.teacher, d.G, d.fake, d.G_ema))
    for _ in range(3):
        stats = d.iteration()
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert set(stats) == ({'loss_psi', 'loss_g'} | ({'loss_d', 'loss_g_gan'} if method == 'sida' else set()))
    assert torch.equal(flat(d.teacher), teacher0)
    assert not torch.equal(flat(d.G), g0) and not torch.equal(flat(d.fake), f0) and not torch.equal(flat(d.G_ema), ema0)
    assert d.images_seen == 3 * BATCH


def test_data_free_sid_runs_on_labels_alone():
    d = make_distiller(None, 'sid')
    assert torch.isfinite(torch.tensor(d.iteration()['loss_g']))


def test_sida_gates_generator_and_adversarial_term(cifar_subset):
    d = make_distiller(cifar_subset, 'sida', g_warmup_images=2 * BATCH, gan_start_images=4 * BATCH)
    g0 = flat(d.G)
    seen = [d.iteration() for _ in range(2)]
    assert torch.equal(flat(d.G), g0) and torch.equal(flat(d.G_ema), g0)   # G bit-identical during the warm-up
    assert all('loss_g' not in s for s in seen)
    assert {'loss_g'} <= set(d.iteration()) and 'loss_g_gan' not in d.iteration()
    assert 'loss_g_gan' in d.iteration()                                    # from 4 batches on
    assert not torch.equal(flat(d.G), g0)


def test_ema_beta_ramp():
    assert ema_beta(256, 0, 500_000, 0.05) == 0.0                   # first update copies G
    assert ema_beta(256, 10**8, 500_000, 0.05) == pytest.approx(0.5 ** (256 / 500_000))
    assert ema_beta(256, 1_000_000, 500_000, 0.05) == pytest.approx(0.5 ** (256 / 50_000))


def _train(data_dir, run_dir, total, resume=None):
    d = make_distiller(data_dir, 'sida', g_warmup_images=BATCH, gan_start_images=2 * BATCH)
    d.cfg.total_images = total
    cfg = runner.RunConfig(run_dir=str(run_dir), total_images=total, log_every_images=BATCH, checkpoint_every_images=2 * BATCH,
                           sample_every_images=0, resume=resume)
    runner.run(d, cfg, write_bundle=lambda path: path.mkdir(parents=True, exist_ok=True), log=lambda m: None)
    return d


def test_resume_matches_an_uninterrupted_run_exactly(cifar_subset, tmp_path):
    """Stop after 3 steps, resume to 6: every weight, optimiser moment and the EMA match a straight 6-step run."""
    straight = _train(cifar_subset, tmp_path / 'a', 6 * BATCH)
    _train(cifar_subset, tmp_path / 'b', 3 * BATCH)
    resumed = _train(cifar_subset, tmp_path / 'b', 6 * BATCH, resume='auto')
    for name in ('G', 'G_ema', 'fake'):
        assert torch.equal(flat(getattr(resumed, name)), flat(getattr(straight, name))), name
    for key in ('exp_avg', 'exp_avg_sq'):
        a = torch.cat([straight.opt_g.state[p][key].flatten() for p in straight.G.parameters() if p in straight.opt_g.state])
        b = torch.cat([resumed.opt_g.state[p][key].flatten() for p in resumed.G.parameters() if p in resumed.opt_g.state])
        assert torch.equal(a, b)
    assert resumed.images_seen == straight.images_seen and resumed.batches.draws == straight.batches.draws
    log = [json.loads(line) for line in (tmp_path / 'b' / 'log.jsonl').read_text().splitlines()]
    assert log[-1]['images_seen'] == 6 * BATCH


def test_checkpoints_are_bundles_and_pruned(cifar_subset, tmp_path):
    d = make_distiller(cifar_subset, 'sid')
    from train.launch import student_bundle_writer
    writer = student_bundle_writer(d, tiny_ddpmpp(dropout=0.0), {'kind': 'class', 'labels': [str(i) for i in range(10)]},
                                   'test', lambda: {'method': 'sid'})
    cfg = runner.RunConfig(run_dir=str(tmp_path), total_images=5 * BATCH, checkpoint_every_images=BATCH, sample_every_images=0,
                           keep_checkpoints=2)
    runner.run(d, cfg, writer, log=lambda m: None)
    names = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
    assert names == ['checkpoint-000000000032', 'checkpoint-000000000040']
    from models.bundle import load_bundle
    bundle = load_bundle(tmp_path / 'bundle')
    assert torch.equal(flat(bundle.generator.denoiser), flat(d.G_ema))
    load_bundle(tmp_path / 'checkpoints' / names[-1])
    assert (tmp_path / 'plots' / 'losses.png').exists() and (tmp_path / 'log.jsonl').exists()


def test_metric_runs_on_its_own_schedule_and_nan_is_never_best(cifar_subset, tmp_path):
    d = make_distiller(cifar_subset, 'sid')
    values = iter([1.0, float('nan'), 3.0, 2.0, 5.0, 4.0])   # the first is the initial generator's
    calls = []

    def metric():
        calls.append(d.images_seen)
        return {'metric_fd_test': next(values)}
    cfg = runner.RunConfig(run_dir=str(tmp_path), total_images=5 * BATCH, log_every_images=2 * BATCH,
                           metric_every_images=BATCH, checkpoint_every_images=100 * BATCH, sample_every_images=0)
    runner.run(d, cfg, write_bundle=lambda path: path.mkdir(parents=True, exist_ok=True), metric=metric, log=lambda m: None)
    assert calls == [BATCH * i for i in range(0, 6)]                       # the start and every metric boundary
    first = json.loads((tmp_path / 'log.jsonl').read_text().splitlines()[0])
    assert first == {'images_seen': 0, 'metric_fd_test': 1.0}              # on the curve, never a best checkpoint
    progress = json.loads((tmp_path / 'checkpoints' / 'checkpoint-000000000040' / 'state' / 'progress.json').read_text())
    assert progress['best']['value'] == 2.0 and progress['best']['checkpoint'] == 'checkpoint-000000000024'
    assert (tmp_path / 'best').is_dir()


@pytest.mark.parametrize('mode,cudagraphs', [('default', False), ('reduce-overhead', True), ('max-autotune', True)])
def test_prepare_compiles_in_place_with_the_measured_inductor_options(mode, cudagraphs, monkeypatch, tmp_path):
    import torch._inductor.config as inductor

    from train import launch
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'compile'))     # restored after: compiling sets it
    calls, before = [], inductor.save_config()
    net = torch.nn.Linear(2, 2)
    monkeypatch.setattr(net, 'compile', lambda **kw: calls.append(kw))
    assert launch.prepare(net, 'cpu', compile_=mode) is net            # in place: state-dict keys unchanged
    (kw,) = calls
    assert set(kw) == {'options', 'dynamic'} and kw['dynamic'] is False and launch.INDUCTOR_OPTIONS.items() <= kw['options'].items()
    assert kw['options'].get('triton.cudagraphs', False) is cudagraphs is launch.uses_cuda_graphs(mode)
    assert inductor.save_config() == before                                # for this compile only, not the process
    torch.compile(torch.nn.Linear(2, 2), options=kw['options'])          # torch accepts the combination
    launch.prepare(torch.nn.Linear(2, 2), 'cpu', compile_=False)
    assert len(calls) == 1


def test_every_iteration_tells_cuda_graphs_a_new_step_begins(monkeypatch):
    import train.distill as distill
    marks = []
    monkeypatch.setattr(torch.compiler, 'cudagraph_mark_step_begin', lambda: marks.append(1))
    distill.new_step('cpu')
    assert marks == []
    distill.new_step('cuda:0')
    assert marks == [1]
    seen = []
    monkeypatch.setattr(distill, 'new_step', seen.append)
    spec = tiny_ddpmpp(augment_dim=0, attn_resolutions=())
    teacher = build_denoiser(spec)
    d = Distiller(DistillConfig(batch=2, g_warmup_images=0), teacher, copy.deepcopy(teacher).requires_grad_(True),
                  copy.deepcopy(teacher).requires_grad_(True), LabelBatches(spec['network_kwargs']['label_dim'], 2, 0, 0, 1, 'cpu'),
                  (3, 16, 16), device='cpu')
    d.iteration()
    d.iteration()
    assert [str(x) for x in seen] == ['cpu', 'cpu']


def test_compiled_networks_get_the_options_in_their_generated_code(monkeypatch, tmp_path):
    """The per-compile options reach inductor: with prepare() a 1x1 convolution becomes a matmul; plain compile keeps it."""
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'compile'))     # empty: compiled here, its code seen
    from torch._inductor.utils import run_and_get_code

    from models.layers import Conv2d
    from train.launch import prepare
    x = torch.randn(2, 8, 4, 4)
    try:
        sources = []
        for ours in (True, False):
            conv = Conv2d(8, 16, kernel=1)
            prepare(conv, 'cpu', compile_='default') if ours else conv.compile()
            out, code = run_and_get_code(conv, x)
            assert torch.allclose(out, torch.nn.functional.conv2d(x, conv.weight, conv.bias), atol=1e-5)
            sources.append('\n'.join(code))
            torch._dynamo.reset()
    finally:
        torch._dynamo.reset()
    assert 'mm(' in sources[0] and 'mm(' not in sources[1]


def augment_labels_seen(d):
    """Run one iteration, recording the augment labels f_psi's map_augment receives, call by call."""
    seen = []
    hook = d.fake.model.map_augment.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    try:
        d.iteration()
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize('method', ['sid', 'sida'])
def test_augment_labels_reach_the_fake_score_only_when_it_learns(cifar_subset, method):
    """--augment > 0: the fake-score step's passes get drawn labels (SiDA: reals and fakes drawn apart); the
    generator step's pass gets zeros, as in the reference. --augment 0: zeros everywhere."""
    data = cifar_subset if method == 'sida' else None
    d = make_distiller(data, method, g_warmup_images=0, gan_start_images=0, augment=0.5)
    *learn, generator_pass = augment_labels_seen(d)
    assert len(learn) == (2 if method == 'sida' else 1)
    assert all(labels.shape == (BATCH, 9) and labels.abs().sum() > 0 for labels in learn)
    if method == 'sida':
        assert not torch.equal(learn[0], learn[1])                          # fakes, then reals: independent draws
    assert torch.equal(generator_pass, torch.zeros(BATCH, 9))
    d = make_distiller(data, method, g_warmup_images=0, gan_start_images=0, augment=0.0)
    assert all(torch.equal(labels, torch.zeros(BATCH, 9)) for labels in augment_labels_seen(d))


def test_augment_defaults_to_the_reference_p_only_for_networks_with_augment_labels():
    assert make_distiller(None, 'sid').cfg.augment == 0.12                  # tiny_ddpmpp: augment_dim 9, like EDM's CIFAR-10
    spec = tiny_ddpmpp(augment_dim=0, attn_resolutions=())
    teacher = build_denoiser(spec)
    for p, expected in ((None, 0.0), (0.3, 0.3)):
        d = Distiller(DistillConfig(batch=2, g_warmup_images=0, augment=p), teacher, copy.deepcopy(teacher).requires_grad_(True),
                      copy.deepcopy(teacher).requires_grad_(True), LabelBatches(10, 2, 0, 0, 1, 'cpu'), (3, 16, 16))
        assert d.cfg.augment == expected
        calls = []
        d.fake.model.register_forward_pre_hook(lambda m, args, kw: calls.append(kw['augment_labels']), with_kwargs=True)
        d.iteration()                                                       # augmented or not, no labels for such a network
        assert len(calls) == 2 and all(labels is None for labels in calls)
    with pytest.raises(ValueError, match='probability'):
        DistillConfig(augment=1.5)


def test_generator_adam_beta1_is_an_option_and_survives_resume(tmp_path):
    d = make_distiller(None, 'sid', g_beta1=0.9)
    assert d.opt_g.param_groups[0]['betas'] == (0.9, 0.999) and d.opt_psi.param_groups[0]['betas'] == (0.0, 0.999)
    assert make_distiller(None, 'sid').opt_g.param_groups[0]['betas'] == (0.0, 0.999)
    cfg = runner.RunConfig(run_dir=str(tmp_path), total_images=BATCH, sample_every_images=0)
    runner.run(d, cfg, write_bundle=lambda path: path.mkdir(parents=True, exist_ok=True), log=lambda m: None)
    resumed = make_distiller(None, 'sid')
    said = []
    runner.restore(resumed, runner.resolve_resume(dataclasses.replace(cfg, resume='auto')), log=said.append)
    assert resumed.opt_g.param_groups[0]['betas'] == (0.9, 0.999)           # the run's optimiser, as checkpointed
    assert said == ['resume: optimizer_g as checkpointed, this command line\'s settings ignored: '
                    'betas (0.9, 0.999) kept, not (0.0, 0.999)']


def test_compiled_sida_compiles_one_static_graph_per_network_call(cifar_subset, tmp_path, monkeypatch):
    """`--compile` as a user runs it (guided SiDA through all three phases, FD metrics and sample grids), with inductor
    swapped for a backend that records each graph: every graph has static shapes (dynamo would otherwise turn the
    batch dimension dynamic once the guided teacher's doubled batch arrived), there is one per distinct network call,
    and none comes from the EMA that the metrics and grids sample (batch 12 here)."""
    from models.bundle import save_bundle
    from models.generator import OneStepGenerator
    from tests.conftest import sida_in_process
    from train.cifar10 import CLASSES
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'compile'))     # restored after: compiling sets it
    graphs, real_compile = [], torch.compile

    def record(gm, inputs):
        tensors = [i for i in inputs if isinstance(i, torch.Tensor)]
        dynamic = any(not isinstance(d, int) for t in tensors for d in t.shape) or len(tensors) < len(inputs)
        images = [tuple(t.shape) for t in tensors if t.ndim == 4 and t.shape[1] == 3]
        graphs.append((dynamic, images[0][0] if images else None))
        return gm.forward
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: real_compile(fn, backend=record, dynamic=kw.get('dynamic')))
    torch._dynamo.reset()
    spec = tiny_ddpmpp(augment_dim=0, label_dropout=0.1)
    save_bundle(tmp_path / 'teacher', OneStepGenerator(perturb_(build_denoiser(spec), 0.02)), name='teacher',
                architecture=spec, condition={'kind': 'class', 'labels': list(CLASSES)})
    classifier = Path(__file__).resolve().parents[2] / 'models' / 'zoo' / 'fd-cifar-classifier' / 'classifier.pt'
    try:
        r = sida_in_process('train', 'distill', '--method', 'sida', '--teacher', tmp_path / 'teacher', '--data', cifar_subset,
                            '--out', tmp_path / 'run', '--compile', 'default', '--guidance', '1.5', '--images', '48',
                            '--batch', '8', '--g-warmup', '16', '--gan-start', '32', '--sample-every', '24',
                            '--metric-features', f'classifier:{classifier}', '--metric-every', '24', '--metric-samples', '12')
    finally:
        torch._dynamo.reset()
    assert r.returncode == 0, r.stderr
    assert 'compile: 0 graph(s) loaded from the cache, 0 compiled' in r.stderr, r.stderr        # inductor's count: none here
    assert 'metric_fd_classifier' in (tmp_path / 'run' / 'log.jsonl').read_text() and (tmp_path / 'run' / 'samples').is_dir()
    assert not any(dynamic for dynamic, _ in graphs), graphs
    # f_psi: training pass, encoder pass on reals; G: frozen pass, training pass; the guided teacher (batch 16);
    # f_psi with input gradients, then with its logits too once the adversarial term is on.
    assert sorted(batch for _, batch in graphs) == [8] * 6 + [16], graphs
