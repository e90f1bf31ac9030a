"""The whole loop on the analytic 2-D toy: exact teacher, known answer (docs/method.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.toy import ExactDenoiser, Mixture, ToyConfig, mode_report, run_toy, sliced_wasserstein


def test_exact_denoiser_sanity():
    m = Mixture()
    mu0 = m.means[:1]
    torch.testing.assert_close(m.denoise(mu0, torch.tensor([0.01])), mu0, atol=2e-3, rtol=0)
    torch.testing.assert_close(m.denoise(torch.zeros(1, 2), torch.tensor([80.0])), (m.weights[:, None] * m.means).sum(0, keepdim=True),
                               atol=1e-3, rtol=0)
    assert ExactDenoiser(m)(torch.zeros(3, 2), 1.0).shape == (3, 2)


def test_metrics_on_known_sets():
    m = Mixture()
    g = torch.Generator().manual_seed(0)
    a, b = m.sample(50_000, g), m.sample(50_000, g)
    assert sliced_wasserstein(a, b) < 0.03
    assert sliced_wasserstein(a, torch.zeros_like(a)) > 0.5
    assert mode_report(a, m)['modes_covered'] == 8 and mode_report(a, m)['tv_mode_weights'] < 0.02
    assert mode_report(m.means[[0]].expand(100, 2), m)['modes_covered'] == 1


@pytest.mark.parametrize('method', ['sid', 'sida'])
def test_toy_learns_every_mode(tmp_path, method):
    metrics = run_toy(ToyConfig(method=method), tmp_path)
    assert metrics['modes_covered'] == metrics['modes_total'] == 8
    # Defaults (1,000 iterations) at seeds 0-4 (2026-12-06): sliced Wasserstein 0.51 -> 0.054-0.067 for SiD (7.7x-9.5x)
    # and 0.062-0.071 for SiDA (7.2x-8.2x); a generator that stays collapsed on the posterior mean keeps ~0.5.
    # 5x is the bar that holds at every seed tried.
    assert metrics['sliced_wasserstein_final'] <= 0.20 * metrics['sliced_wasserstein_initial'], metrics
    assert json.loads((tmp_path / 'metrics.json').read_text())['sliced_wasserstein_final'] == metrics['sliced_wasserstein_final']
    assert (tmp_path / 'samples.png').stat().st_size > 10_000


def test_sida_moves_a_biased_teacher_towards_the_data(tmp_path):
    """Teacher: uniform mode weights; data: the true unequal ones. SiD follows the teacher; SiDA's
    adversarial term pulls the mode weights towards the data. Mode-weight TV against the data at seeds 0-4 with the
    defaults (2026-12-06): SiD 0.238-0.265 (0.013-0.050 from the teacher's); SiDA with scale 3.0 0.090-0.165, margins
    0.085-0.155."""
    sid = run_toy(ToyConfig(method='sid', biased_teacher=True), tmp_path / 'sid')
    sida = run_toy(ToyConfig(method='sida', biased_teacher=True, loss_scale_g_gan=3.0), tmp_path / 'sida')
    assert sid['tv_vs_teacher'] < 0.1 and sid['tv_mode_weights'] > 0.18
    assert sida['tv_mode_weights'] < sid['tv_mode_weights'] - 0.05, (sid, sida)


def test_cli_writes_metrics_and_plot(tmp_path):
    cmd = [str(Path(sys.executable).parent / 'sida'), 'train', 'toy', '--method', 'sid', '--iterations', '20', '--out', str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert {'sliced_wasserstein_initial', 'sliced_wasserstein_final', 'modes_covered', 'modes_total'} <= set(metrics)
    assert (tmp_path / 'samples.png').exists()
