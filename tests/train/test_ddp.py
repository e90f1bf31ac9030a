"""torchrun-style DDP on CPU (gloo): 2 processes against 1 with the same global batch."""

import json
import socket

import pytest
import torch
from safetensors.torch import load_file

from tests.train.ddp_worker import build, grads, worker


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One thread in this process and in the ranks it starts, as `make test` runs them: gradients are compared to 1e-4
    of their largest value, and with two threads each, the SiD-LSG comparison had one element of 1,024 past that."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _spawn(tmp_path, data_dir, method, iterations):
    torch.multiprocessing.spawn(worker, args=(2, _free_port(), str(data_dir), str(tmp_path), method, iterations), nprocs=2, join=True)
    stats = [json.loads((tmp_path / f'stats_rank{r}.json').read_text()) for r in range(2)]
    return [load_file(str(tmp_path / f'grads_rank{r}.safetensors')) for r in range(2)], stats


def _assert_same_grads(ddp_grads, reference):
    assert set(reference) == set(ddp_grads[0]) and len(reference) > 50
    for rank_grads in ddp_grads:
        for key, value in reference.items():
            scale = value.abs().max().item() + 1e-12
            torch.testing.assert_close(rank_grads[key], value, rtol=1e-3, atol=1e-4 * scale)


def test_sid_two_processes_match_one_with_the_same_global_batch(cifar_subset, tmp_path):
    """Gradients after the all-reduce equal the single-process gradients of the whole batch (Adam's
    sign-like first step would hide a scaling bug in the weights, so gradients are compared)."""
    ddp_grads, stats = _spawn(tmp_path, cifar_subset, 'sid', iterations=1)
    single = build(cifar_subset, 'sid', 0, 1, ddp=False)
    single_stats = single.iteration()
    reference = grads(single)
    _assert_same_grads(ddp_grads, reference)
    mean = lambda k: (stats[0][0][k] + stats[1][0][k]) / 2
    assert mean('loss_g') == pytest.approx(single_stats['loss_g'], rel=1e-4)


def test_sid_lsg_two_processes_match_one_with_the_same_global_batch(tmp_path):
    """SiD-LSG with guidance (one batched [uncond; cond] call through the DDP-wrapped fake score) reduces like SiD."""
    pytest.importorskip('diffusers', reason='the [t2i] extra is not installed')
    from models.random_sd import write_random_sd
    sd_dir = write_random_sd(tmp_path / 'sd')
    ddp_grads, stats = _spawn(tmp_path, sd_dir, 'sid-lsg', iterations=1)
    single = build(sd_dir, 'sid-lsg', 0, 1, ddp=False)
    single_stats = single.iteration()
    reference = grads(single)
    _assert_same_grads(ddp_grads, reference)
    for key in ('loss_psi', 'loss_g'):
        assert (stats[0][0][key] + stats[1][0][key]) / 2 == pytest.approx(single_stats[key], rel=1e-4)


def test_sida_each_rank_averages_its_own_batch(cifar_subset, tmp_path):
    _, stats = _spawn(tmp_path, cifar_subset, 'sida', iterations=1)
    per_rank = [build(cifar_subset, 'sida', r, 2, ddp=False).iteration()['loss_d'] for r in range(2)]
    pooled = build(cifar_subset, 'sida', 0, 1, ddp=False).iteration()['loss_d']
    for r in range(2):
        assert stats[r][0]['loss_d'] == pytest.approx(per_rank[r], rel=1e-5)   # the BCE scalar of this rank's batch only
    assert stats[0][0]['loss_d'] != pytest.approx(stats[1][0]['loss_d'], rel=1e-3)
    assert (stats[0][0]['loss_d'] + stats[1][0]['loss_d']) != pytest.approx(pooled, rel=1e-3)


def test_logged_statistics_are_the_mean_over_ranks(tmp_path):
    """The run log's losses under DDP are the global batch's (every rank's slice averaged), as one process logs them."""
    from tests.train.ddp_worker import mean_worker
    from train.runner import mean_over_ranks
    torch.multiprocessing.spawn(mean_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f'means_rank{rank}.json').read_text()) == {'loss_g': 0.5, 'loss_psi': 2.5}
    assert mean_over_ranks({'loss_g': 1.0}) == {'loss_g': 1.0}                  # one process: as it is


def _torchrun_distill(tmp_path, *extra):
    """`sida train distill` (SiD, the tiny bench teacher) under torchrun with one process; its config.json."""
    import subprocess
    import sys

    from tests.bench.conftest import make_bundle
    teacher = make_bundle(tmp_path / 'teacher', seed=1)
    out = tmp_path / 'run'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '--master_addr', '127.0.0.1',
                        '--master_port', str(_free_port()), '-m', 'sida.cli', 'train', 'distill', '--method', 'sid',
                        '--teacher', str(teacher), '--out', str(out), '--images', '32', '--batch', '8', '--g-warmup', '8',
                        '--log-every', '8', '--sample-every', '1k', '--checkpoint-every', '1k', '--seed', '0', *extra],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads((out / 'config.json').read_text()), out


def test_torchrun_with_one_process_runs_the_ddp_path(tmp_path):
    """Under torchrun the networks are DDP-wrapped even for one process: one GPU can test the multi-GPU code path."""
    config, out = _torchrun_distill(tmp_path, '--device', 'cpu')
    assert config['ddp'] is True and config['world_size'] == 1
    assert (out / 'bundle' / 'sida.json').is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA graphs with DDP need a GPU')
def test_cuda_graphs_with_ddp_on_one_gpu_under_torchrun(tmp_path):
    """[scale-train]: --compile reduce-overhead (CUDA graphs) through DDP, world size 1, to the end of a short run."""
    config, out = _torchrun_distill(tmp_path, '--device', 'cuda', '--compile', 'reduce-overhead')
    assert config['ddp'] is True and config['compile'] == 'reduce-overhead'
    rows = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert rows[-1]['images_seen'] == 32 and all(row['loss_psi'] == row['loss_psi'] for row in rows)     # no NaN
