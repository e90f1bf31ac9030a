"""`sida bench scaling`: real distillation runs (one process, and two under torchrun with gloo) read into rows with
their scaling efficiency, and the two-process run's logged losses against the one-process run of the same global batch."""

import json
import subprocess
import sys

import pytest

from tests.bench.conftest import invoke, make_bundle, only_json

PY = sys.executable


def _distill(out, teacher, batch, procs=1, port=None):
    args = ['-m', 'sida.cli', 'train', 'distill', '--method', 'sid', '--teacher', str(teacher), '--out', str(out),
            '--images', '48', '--batch', str(batch), '--g-warmup', '16', '--log-every', str(batch), '--sample-every', '1k',
            '--checkpoint-every', '1k', '--device', 'cpu', '--seed', '0']
    launch = [PY] if procs == 1 else [PY, '-m', 'torch.distributed.run', '--nproc_per_node', str(procs),
                                      '--master_addr', '127.0.0.1', '--master_port', str(port)]
    r = subprocess.run(launch + args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out


def test_scaling_rows_and_loss_agreement_from_real_runs(tmp_path):
    from tests.train.test_ddp import _free_port
    teacher = make_bundle(tmp_path / 'teacher', seed=1)
    one = _distill(tmp_path / 'one-gpu-b8', teacher, 8)
    two = _distill(tmp_path / 'two-gpus-b8', teacher, 8, procs=2, port=_free_port())
    base = _distill(tmp_path / 'one-gpu-b4', teacher, 4)
    invoke('scaling', one, two, base, '--compare', f'{one},{two}', '--out', tmp_path / 'out', '--name', 'cpu')
    path, result = only_json(tmp_path / 'out')
    assert path.with_suffix('.png').is_file()
    rows = {(r['gpus'], r['per_gpu_batch']): r for r in result['results']}
    assert set(rows) == {(1, 8), (2, 4), (1, 4)} and all(r['images_per_s'] > 0 and r['windows'] >= 1 for r in rows.values())
    assert rows[(1, 4)]['efficiency'] == 1.0 and rows[(1, 8)]['efficiency'] == 1.0
    assert rows[(2, 4)]['efficiency'] == pytest.approx(rows[(2, 4)]['images_per_s'] / (2 * rows[(1, 4)]['images_per_s']))
    assert rows[(2, 4)]['global_batch'] == 8 and rows[(2, 4)]['method'] == 'sid'
    assert json.loads((one / 'config.json').read_text())['ddp'] is False                  # no torchrun: no DDP
    assert json.loads((two / 'config.json').read_text())['ddp'] is True
    agreement = result['settings']['loss_agreement']
    assert agreement['windows'] == 6                                 # one log line per iteration of the 8-image batch
    for loss in ('loss_psi', 'loss_g'):                              # the mean over both ranks = the one-process mean
        assert agreement[loss]['max_relative_difference'] < 1e-3, agreement


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from bench.cli import bench
    (tmp_path / 'empty').mkdir()
    result = CliRunner().invoke(bench, ['scaling', str(tmp_path / 'empty'), '--out', str(tmp_path / 'out')])
    assert result.exit_code == 1 and 'not a finished training run folder' in result.output
    (tmp_path / 'short').mkdir()
    (tmp_path / 'short' / 'config.json').write_text(json.dumps({'world_size': 1, 'per_gpu_batch': 8}))
    (tmp_path / 'short' / 'log.jsonl').write_text(json.dumps({'images_seen': 8, 'images_per_s': 10.0}) + '\n')
    result = CliRunner().invoke(bench, ['scaling', str(tmp_path / 'short'), '--out', str(tmp_path / 'out')])
    assert result.exit_code == 1 and 'none after the first 2' in result.output
