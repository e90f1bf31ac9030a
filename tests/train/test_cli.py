"""The training commands as a user runs them: teacher -> SiDA student -> images, from real CIFAR-10 files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.bundle import load_bundle
from tests.conftest import sida_in_process

SIDA = str(Path(sys.executable).parent / 'sida')
TINY = ['--model-channels', '16', '--channel-mult', '1,2', '--num-blocks', '1', '--attn', '8', '--resolution', '16']


def sida(*args):
    return subprocess.run([SIDA, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_teacher_then_sida_student_then_generate(cifar_subset, tmp_path):
    teacher = tmp_path / 'teacher'
    r = sida('train', 'teacher', '--data', cifar_subset, '--out', teacher, '--images', '64', '--batch', '16', *TINY,
             '--log-every', '32', '--sample-every', '64', '--checkpoint-every', '32')
    assert r.returncode == 0, r.stderr
    config = load_bundle(teacher / 'bundle').config
    assert config.condition['labels'][:2] == ['airplane', 'automobile'] and config.provenance['method'] == 'edm-teacher'
    assert (teacher / 'samples' / '000000000064.png').exists() and (teacher / 'plots' / 'losses.png').exists()
    resolved = json.loads((teacher / 'config.json').read_text())
    assert resolved['compile'] is None and resolved['channels_last'] is False     # how it ran is on record

    student = tmp_path / 'student'
    r = sida('train', 'distill', '--method', 'sida', '--teacher', teacher / 'bundle', '--data', cifar_subset, '--out', student,
             '--images', '48', '--batch', '8', '--g-warmup', '16', '--gan-start', '32', '--log-every', '16', '--sample-every', '48',
             '--checkpoint-every', '24', '--save-dtype', 'bf16', '--export', 'onnx,triton-repo')
    assert r.returncode == 0, r.stderr
    manifest = json.loads((student / 'bundle' / 'exports' / 'manifest.json').read_text())['exports']
    assert manifest['onnx-fp32']['parity']['passed'] and 'triton-onnxruntime' in manifest
    assert (student / 'triton-repo' / 'student-sida' / 'config.pbtxt').exists()
    bundle = load_bundle(student / 'bundle')
    assert bundle.config.provenance['method'] == 'sida' and bundle.config.provenance['images_seen'] == 48
    # the teacher's weights, so that an evaluation can tell its own teacher from another
    assert bundle.config.provenance['teacher_weights_sha256'] == config.sha256['generator.safetensors']
    assert bundle.config.condition == config.condition
    rows = [json.loads(line) for line in (student / 'log.jsonl').read_text().splitlines()]
    assert 'loss_g_gan' in rows[-1] and 'loss_g' not in rows[0]
    cfg = json.loads((student / 'config.json').read_text())
    assert cfg['per_gpu_batch'] == 8 and cfg['distill']['alpha'] == 1.0 and cfg['distill']['g_beta1'] == 0.0
    assert cfg['distill']['augment'] == 0.0            # resolved: our teachers take no augment labels

    r = sida('generate', '--bundle', student / 'bundle', '--seeds', '0-3', '--class', 'ship', '--grid', tmp_path / 'ships.png')
    assert r.returncode == 0 and (tmp_path / 'ships.png').is_file(), r.stderr

    # Resume picks up the newest checkpoint and goes on to a longer total.
    r = sida('train', 'distill', '--method', 'sida', '--teacher', teacher / 'bundle', '--data', cifar_subset, '--out', student,
             '--images', '64', '--batch', '8', '--g-warmup', '16', '--gan-start', '32', '--resume', 'auto', '--log-every', '16')
    assert r.returncode == 0, r.stderr
    assert 'resumed from' in r.stderr and load_bundle(student / 'bundle').config.provenance['images_seen'] == 64

    # A student continued in a new run (--generator: a warm restart, the fake score fresh from the teacher): it starts
    # from that student's weights (with --lr 0 they stay exactly those) and its card counts the images of both runs.
    r = sida('train', 'distill', '--method', 'sida', '--teacher', teacher / 'bundle', '--data', cifar_subset, '--out',
             tmp_path / 'more', '--generator', student / 'bundle', '--lr', '0', '--images', '16', '--batch', '8',
             '--g-warmup', '8', '--gan-start', '8', '--log-every', '16', '--sample-every', '1000M')
    assert r.returncode == 0 and '(64 generator images before)' in r.stderr, r.stderr
    before, after = (load_bundle(run / 'bundle') for run in (student, tmp_path / 'more'))
    for name, weight in before.generator.denoiser.state_dict().items():
        assert torch.allclose(weight.float(), after.generator.denoiser.state_dict()[name].float(), rtol=1e-6, atol=0), name
    provenance = after.config.provenance
    assert (provenance['images_seen'], provenance['images_total'], provenance['generator_init']['images_total']) == (16, 80, 64)
    assert provenance['generator_init']['weights_sha256'] == before.config.sha256['generator.safetensors']
    # Resumed, it stays that continuation (the earlier run's images still count); another start is refused, as is a teacher.
    more = ['train', 'distill', '--method', 'sida', '--teacher', teacher / 'bundle', '--data', cifar_subset, '--out',
            tmp_path / 'more', '--batch', '8', '--g-warmup', '8', '--gan-start', '8', '--sample-every', '1000M', '--resume', 'auto']
    r = sida(*more, '--images', '24')
    assert r.returncode == 0, r.stderr
    resumed = load_bundle(tmp_path / 'more' / 'bundle').config.provenance
    assert (resumed['images_seen'], resumed['images_total'], resumed['generator_init']) == (24, 88, provenance['generator_init'])
    r = sida('train', 'distill', '--method', 'sida', '--teacher', teacher / 'bundle', '--data', cifar_subset, '--out', student,
             '--images', '72', '--batch', '8', '--resume', 'auto', '--generator', tmp_path / 'more' / 'bundle')
    assert r.returncode == 1 and 'started from other weights (the teacher)' in r.stderr, r.stderr
    r = sida('train', 'distill', '--method', 'sida', '--teacher', teacher / 'bundle', '--data', cifar_subset, '--out',
             tmp_path / 'x', '--generator', teacher / 'bundle')
    assert r.returncode == 1 and 'a teacher (a denoiser for the many-step sampler)' in r.stderr, r.stderr


def test_a_teacher_continues_from_its_bundle(cifar_subset, tmp_path):
    """--init-from: the bundle's weights start the run (with --lr 0 nothing moves, so the new bundle holds exactly
    them), the images seen before are counted on, and a bundle of another architecture is refused by name."""
    from safetensors.torch import load_file
    common = ['--data', cifar_subset, '--batch', '16', *TINY, '--log-every', '16', '--sample-every', '1000M',
              '--checkpoint-every', '1000M']
    r = sida('train', 'teacher', '--out', tmp_path / 'first', '--images', '32', *common)
    assert r.returncode == 0, r.stderr
    r = sida('train', 'teacher', '--out', tmp_path / 'second', '--images', '16', '--lr', '0', '--init-from',
             tmp_path / 'first' / 'bundle', *common)
    assert r.returncode == 0, r.stderr
    assert 'continuing' in r.stderr and '32 images seen before' in r.stderr
    first, second = (load_file(tmp_path / run / 'bundle' / 'generator.safetensors') for run in ('first', 'second'))
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)
    provenance = load_bundle(tmp_path / 'second' / 'bundle').config.provenance
    assert (provenance['images_seen'], provenance['images_total'], provenance['init_from']['images_total']) == (16, 48, 32)
    assert json.loads((tmp_path / 'second' / 'config.json').read_text())['teacher']['ema_rampup'] is None
    assert provenance['init_from']['bundle'] == str((tmp_path / 'first' / 'bundle').resolve())

    # Resumed without --init-from, the run is still the warm restart its first start was.
    r = sida('train', 'teacher', '--out', tmp_path / 'second', '--images', '32', '--resume', 'auto', *common)
    assert r.returncode == 0, r.stderr
    resumed = load_bundle(tmp_path / 'second' / 'bundle').config.provenance
    assert (resumed['images_seen'], resumed['images_total'], resumed['init_from']) == (32, 64, provenance['init_from'])
    assert json.loads((tmp_path / 'second' / 'config.json').read_text())['teacher']['ema_rampup'] is None
    r = sida('train', 'teacher', '--out', tmp_path / 'first', '--images', '16', '--init-from', tmp_path / 'first' / 'bundle',
             *common)
    assert r.returncode == 1 and 'is inside --out' in r.stderr

    wider = ['--model-channels', '32', *TINY[2:]]
    r = sida('train', 'teacher', '--out', tmp_path / 'third', '--images', '16', '--init-from', tmp_path / 'first' / 'bundle',
             '--data', cifar_subset, '--batch', '16', *wider)
    assert r.returncode == 1 and 'another architecture (network_kwargs.model_channels 32 here, 16 there' in r.stderr


@pytest.mark.parametrize('args,fragment', [
    (['train', 'distill', '--method', 'sida', '--teacher', '.', '--out', 'x'], 'needs real images'),
    (['train', 'distill', '--teacher', 'README.md', '--out', 'x', '--method', 'sid'], 'cannot load the teacher'),
    (['train', 'teacher', '--out', 'x'], 'give --data'),
    (['train', 'distill', '--teacher', '.', '--out', 'x', '--images', 'lots'], 'not a count'),
    (['train', 'distill', '--teacher', '.', '--out', 'x', '--export', 'gif'], "unknown --export target(s) ['gif']"),
    (['train', 'distill', '--teacher', '.', '--out', 'x', '--compile', 'fast'], "'fast' is not one of 'default', 'reduce-overhead'"),
    (['train', 'lsg', '--teacher', '.', '--prompts', 'README.md', '--out', 'x', '--offload-teacher', '--compile', 'reduce-overhead'],
     '--offload-teacher cannot be combined with --compile reduce-overhead (CUDA graphs)'),
])
def test_bad_invocations_fail_with_a_reason(tmp_path, args, fragment, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    r = sida_in_process(*args)
    assert r.returncode != 0 and fragment in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_train_help_lists_its_commands():
    r = subprocess.run([SIDA, 'train', '--help'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for name in ('distill', 'teacher', 'toy', 'classifier'):
        assert f'  {name} ' in r.stdout


@pytest.mark.parametrize('args, section', [
    (['train', 'distill', '--method', 'sida', '--teacher', 'README.md', '--data', 'README.md', '--out', 'x', '--images', '2M',
      '--save-dtype', 'bf16', '--augment', '0.15', '--g-beta1', '0.9', '--guidance', '1.5'], 'distill'),
    (['train', 'teacher', '--data', 'README.md', '--out', 'x', '--lr', '2e-4'], 'teacher'),
    (['train', 'lsg', '--teacher', '.', '--prompts', 'README.md', '--out', 'x', '--guidance', '3'], 'lsg'),
    (['train', 'toy', '--out', 'x', '--method', 'sida'], 'toy'),
])
def test_dry_run_prints_the_typed_configuration_and_loads_nothing(tmp_path, args, section, monkeypatch):
    """README.md is no teacher and no data set: a dry run must not touch either, and must write nothing."""
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    args = [str(tmp_path / 'x') if a == 'x' else a for a in args]
    r = sida_in_process(*args, '--dry-run')
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)
    assert config['command'] == section and not (tmp_path / 'x').exists()
    if section == 'distill':
        assert config['distill']['alpha'] == 1.0 and config['distill']['lr_psi'] == 1e-5          # resolved defaults
        assert config['run']['total_images'] == 2_000_000 and config['options']['save_dtype'] == 'bf16'
        assert config['options']['device'] == 'auto'
        assert config['distill']['augment'] == 0.15 and config['distill']['g_beta1'] == 0.9
        assert config['distill']['guidance'] == 1.5
    if section == 'teacher':
        assert config['teacher']['lr'] == 2e-4 and config['run']['total_images'] == 20_000_000
    if section == 'lsg':
        assert config['lsg']['guidance'] == 3.0 and config['lsg']['batch'] == 512          # the command's own default
    if section == 'toy':
        assert config['toy']['method'] == 'sida' and config['toy']['iterations'] == 1000


@pytest.mark.parametrize('args, fragment', [
    (['train', 'distill', '--teacher', 'README.md', '--out', 'x', '--device', 'tpu'], "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    (['train', 'teacher', '--data', 'README.md', '--out', 'x', '--save-dtype', 'float16'], "'float16' is not one of 'fp32', 'fp16'"),
    (['train', 'distill', '--teacher', 'README.md', '--out', 'x', '--batch', '0'], '0 is not in the range x>=1'),
    (['train', 'distill', '--teacher', 'README.md', '--out', 'x', '--augment', '1.5'], '1.5 is not in the range 0<=x<=1'),
    (['train', 'distill', '--teacher', 'README.md', '--out', 'x', '--guidance', '0.5'], '0.5 is not in the range x>=1'),
    (['train', 'teacher', '--data', 'README.md', '--out', 'x', '--label-dropout', '1.5'], '1.5 is not in the range 0<=x<=1'),
])
def test_invalid_option_values_exit_2_with_one_error_line(args, fragment, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    r = sida_in_process(*args, '--dry-run')
    errors = [line for line in r.stderr.splitlines() if line.startswith('Error')]
    assert r.returncode == 2 and len(errors) == 1 and fragment in errors[0], r.stderr


def test_every_training_option_has_help_and_no_hand_typed_default():
    import click

    from sida.cli import main
    ctx = click.Context(main)
    for group in ('train', 'data'):
        group_cmd = main.get_command(ctx, group)
        for name, command in group_cmd.commands.items():
            assert command.help, f'{group} {name} has no help'
            for param in command.params:
                if isinstance(param, click.Option):
                    where = f'sida {group} {name} {param.opts[0]}'
                    assert param.help, f'{where} has no help'
                    assert '[default' not in param.help and 'default:' not in param.help, f'{where} types its default by hand'
