"""`sida bench teacher-vs-student`: a bundle as the teacher (its denoiser under EDM Heun) against a one-step student."""

import pytest

from bench.teacher import CountingDenoiser, heun_steps
from tests.bench.conftest import invoke, make_bundle, only_json


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp('tvs')
    teacher = make_bundle(root / 'teacher', seed=1, provenance={'metrics': {'fd_cifar': 3.1}})
    student = make_bundle(root / 'student', seed=2,
                          provenance={'metrics': {'fd_cifar': 4.2, 'fd_cifar_teacher_nfe5': 3.3, 'images_seen': 1000}})
    out = root / 'results'
    invoke('teacher-vs-student', '--teacher', teacher, '--student', student, '--batch', 2, '--runs', 2, '--nfe', '5,4',
           '--warmup-seconds', 0, '--out', out)
    return only_json(out)


def test_rows_time_the_student_and_each_teacher_nfe_with_the_speedup(run):
    path, result = run
    assert path.name.endswith('-teacher-vs-student-tiny-2.json') and path.with_suffix('.png').is_file()
    student, *teachers = result['results']
    assert student['role'] == 'student' and student['nfe'] == 1 and student['speedup'] == 1.0
    assert [(t['nfe_requested'], t['nfe'], t['steps']) for t in teachers] == [(5, 5, 3), (4, 3, 2)]  # Heun: 2 * steps - 1
    for row in result['results']:
        assert row['kind'] == 'teacher-vs-student' and row['batch'] == 2 and row['precision'] == 'fp32'
        assert row['p50_ms'] <= row['p99_ms'] and row['images_per_s'] > 0
    for t in teachers:
        assert t['speedup'] == pytest.approx(t['ms_per_image'] / student['ms_per_image'])
        assert t['flops_per_image'] == pytest.approx(t['nfe'] * student['flops_per_image'], rel=0.01)  # same network, NFE calls


def test_quality_metrics_come_from_the_bundles_provenance(run):
    _, result = run
    student, teacher5, teacher3 = result['results']
    assert student['metrics'] == {'fd_cifar': 4.2, 'images_seen': 1000}
    assert teacher5['metrics'] == {'fd_cifar': 3.3} and teacher3['metrics'] == {}
    assert result['settings']['teacher_metrics'] == {'fd_cifar': 3.1}


def test_heun_steps_never_exceed_the_asked_nfe():
    assert [2 * heun_steps(n) - 1 for n in (1, 2, 3, 18, 35)] == [1, 1, 3, 17, 35]


def test_counting_denoiser_counts_calls_and_keeps_sigma_range():
    class D:
        sigma_min, sigma_max = 0.01, 50.0

        def __call__(self, x, sigma):
            return x
    counted = CountingDenoiser(D())
    counted(1, 2)
    counted(3, 4)
    assert counted.calls == 2 and (counted.sigma_min, counted.sigma_max) == (0.01, 50.0)


def test_the_compile_backend_times_both_models_compiled(tmp_path):
    """--backend compile: the student through compile_generator, the teacher's denoiser through compile_denoiser (one
    graph every Heun step replays); NFE still counted, the options recorded."""
    teacher = make_bundle(tmp_path / 'teacher', seed=1)
    student = make_bundle(tmp_path / 'student', seed=2)
    invoke('teacher-vs-student', '--teacher', teacher, '--student', student, '--batch', 2, '--runs', 2, '--nfe', '3',
           '--backend', 'compile', '--warmup-seconds', 0, '--out', tmp_path / 'out', '--no-plot')
    _, result = only_json(tmp_path / 'out')
    student_row, teacher_row = result['results']
    assert result['settings']['backend'] == 'compile' and result['settings']['compile_options'] == 'default+fused-affines'
    assert (student_row['nfe'], teacher_row['nfe']) == (1, 3) and teacher_row['speedup'] > 0


def test_a_compiled_denoiser_computes_what_the_eager_one_does(tmp_path):
    import torch

    from export.compiled import CompileOptions, compile_denoiser
    from models.bundle import load_bundle
    bundle = load_bundle(make_bundle(tmp_path / 'b', seed=3))
    denoiser = bundle.generator.denoiser
    x, sigma = torch.randn(2, 3, 16, 16) * 5, torch.tensor([5.0, 0.5])
    labels = torch.nn.functional.one_hot(torch.tensor([1, 2]), bundle.config.architecture['network_kwargs']['label_dim']).float()
    with torch.inference_mode():
        expected = denoiser(x, sigma, class_labels=labels)
        compiled = compile_denoiser(load_bundle(tmp_path / 'b').generator.denoiser, 'fp32',
                                    CompileOptions.parse('default+fused-affines'), 'cpu')
        torch.testing.assert_close(compiled(x, sigma, class_labels=labels), expected, atol=1e-4, rtol=1e-4)
