import math

import numpy as np
import pytest
import torch

from models.precond import karras_sigma
from train.sid import fake_score_loss, fake_score_sigma, finite_rows, generator_loss, generator_sigma, sid_loss, sid_normaliser
from train.sida import adversarial_generator_loss, discriminator_logits, fake_score_and_discriminator_loss


def test_fake_score_sigma_is_edm_log_normal():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sigma = fake_score_sigma(1000, generator=g1)
    torch.testing.assert_close(sigma, (-1.2 + 1.2 * torch.randn(1000, generator=g2)).exp())


def test_generator_sigma_is_karras_of_uniform_t_up_to_tmax():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sigma = generator_sigma(10000, tmax=800, generator=g1)
    torch.testing.assert_close(sigma, karras_sigma(torch.rand(10000, generator=g2) * 0.8))
    assert sigma.min() >= 0.002 and sigma.max() <= 24.42


def test_sid_loss_by_hand():
    x_g = torch.tensor([[1.0, 2.0]])
    y_r = torch.tensor([[2.0, 0.0]])
    y_f = torch.tensor([[1.0, 1.0]])
    w = sid_normaliser(x_g, y_r)
    assert w.item() == pytest.approx(1.5)             # mean(|1-2|, |2-0|)
    # d = y_r - y_f = (1, -1); y_r - x_g = (1, -2); e = (1 - 1.2, -2 + 1.2) = (-0.2, -0.8); d.e = -0.2 + 0.8
    assert sid_loss(x_g, y_r, y_f, w, alpha=1.2).item() == pytest.approx(0.6 / 1.5)
    # The paper's form: [<d, y_f - x_g> + (1 - alpha)|d|^2] / w = [(0 + 1) + (-0.2)(2)] / 1.5
    assert sid_loss(x_g, y_r, y_f, w, alpha=1.2).item() == pytest.approx((1 - 0.4) / 1.5)


def test_normaliser_floor_and_no_gradient():
    x_g = torch.zeros(2, 3, requires_grad=True)
    w = sid_normaliser(x_g, torch.zeros(2, 3))
    assert torch.equal(w, torch.full((2,), 1e-5)) and not w.requires_grad


class Affine(torch.nn.Module):
    """D(x) = A x + b on flattened inputs (sigma ignored): gradients can be derived by hand."""

    def __init__(self, A, b):
        super().__init__()
        self.A, self.b = torch.as_tensor(A), torch.as_tensor(b)

    def forward(self, x, sigma, **cond):
        return (x.flatten(1) @ self.A.T + self.b).reshape(x.shape)


def _affine_pair(dim, seed=0):
    rng = np.random.default_rng(seed)
    A_r = np.eye(dim) * 0.7 + rng.normal(0, 0.2, (dim, dim))
    A_f = np.eye(dim) * 0.5 + rng.normal(0, 0.2, (dim, dim))
    return A_r, rng.normal(0, 0.3, dim), A_f, rng.normal(0, 0.3, dim)


@pytest.mark.parametrize('alpha', [1.2, 1.0, 0.5])
def test_gradient_flows_through_x_g_and_both_denoisers(alpha):
    """The bug an end-to-end test cannot see: detaching x_t turns SiD into a DMD-like update."""
    dim = 4
    A_r, b_r, A_f, b_f = _affine_pair(dim)
    x_g = torch.tensor(np.random.default_rng(1).normal(size=(1, 1, 2, 2)), requires_grad=True)
    eps = torch.tensor(np.random.default_rng(2).normal(size=(1, 1, 2, 2)))
    sigma = torch.tensor([0.7], dtype=torch.float64)
    loss, w, _, _ = generator_loss(x_g, Affine(A_r, b_r), Affine(A_f, b_f), sigma, eps, alpha=alpha)
    (grad,) = torch.autograd.grad(loss.sum(), x_g)

    x = x_g.detach().numpy().ravel()
    x_t = x + 0.7 * eps.numpy().ravel()
    y_r, y_f = A_r @ x_t + b_r, A_f @ x_t + b_f
    d, M = y_r - y_f, A_r - A_f
    e = (y_r - x) - alpha * d
    expected = (M.T @ e + (A_r - np.eye(dim) - alpha * M).T @ d) / w.item()
    np.testing.assert_allclose(grad.numpy().ravel(), expected, rtol=1e-10)
    detached_x_t_gradient = -d / w.item()     # what a stop-gradient on x_t would leave
    assert np.abs(expected - detached_x_t_gradient).max() > 1e-3


def test_identical_denoisers_give_zero_loss_and_zero_gradient():
    A, b, _, _ = _affine_pair(4)
    net = Affine(A, b)
    x_g = torch.randn(3, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    loss, _, _, _ = generator_loss(x_g, net, net, torch.ones(3, dtype=torch.float64), torch.randn_like(x_g))
    (grad,) = torch.autograd.grad(loss.sum(), x_g)
    assert torch.equal(loss, torch.zeros(3, dtype=torch.float64)) and torch.equal(grad, torch.zeros_like(grad))


def test_nan_samples_are_dropped():
    class NaNOnSecond(torch.nn.Module):
        def forward(self, x, sigma, **cond):
            out = x * 0.5
            out[1] = float('nan')
            return out
    x_g = torch.randn(3, 1, 2, 2, requires_grad=True)
    identity = Affine(torch.eye(4), torch.zeros(4)).float()
    loss, w, keep, _ = generator_loss(x_g, NaNOnSecond(), identity, torch.ones(3), torch.randn(3, 1, 2, 2))
    assert keep.tolist() == [True, False, True] and loss.shape == (2,) and torch.isfinite(loss).all()
    assert fake_score_loss(NaNOnSecond(), x_g.detach(), torch.ones(3), torch.randn(3, 1, 2, 2)).shape == (2,)
    assert finite_rows(torch.tensor([[1.0], [float('inf')]])).tolist() == [True, False]


def test_fake_score_loss_is_lambda_weighted_dsm():
    x_g, eps, sigma = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2), torch.tensor([0.5, 2.0])
    zero = lambda x, s, **c: torch.zeros_like(x)
    loss = fake_score_loss(zero, x_g, sigma, eps)
    torch.testing.assert_close(loss, torch.tensor([8.0, 4.25]) * (x_g ** 2).flatten(1).sum(1))


class Encoder(torch.nn.Module):
    """A denoiser whose 'bottleneck' is a constant feature map: logits are known exactly."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, sigma, output='denoised', **cond):
        feat = torch.full((x.shape[0], 4, 2, 2), self.value)
        if output == 'bottleneck':
            return feat
        return (x * 0.5, feat) if output == 'both' else x * 0.5


def test_discriminator_loss_is_lambda_times_one_batch_scalar():
    x_g, x_real, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    _, loss_d = fake_score_and_discriminator_loss(Encoder(0.0), x_g, x_real, sigma, eps)
    lam = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss_d, lam * math.log(2))   # BCE(0, 1) = BCE(0, 0) = ln 2, one scalar for the batch
    assert discriminator_logits(torch.randn(3, 256, 8, 8)).shape == (3, 1, 8, 8)


def test_each_bce_is_a_mean_over_the_whole_batch():
    class PerSample(Encoder):
        def forward(self, x, sigma, output='denoised', **cond):
            feat = torch.arange(x.shape[0], dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 4, 2, 2)
            return feat if output == 'bottleneck' else (x, feat)
    x = torch.randn(4, 1, 4, 4)
    _, loss_d = fake_score_and_discriminator_loss(PerSample(0), x, x, torch.ones(4), torch.zeros_like(x))
    logits = torch.arange(4.0)
    bce_real = torch.nn.functional.softplus(-logits).mean()
    bce_fake = torch.nn.functional.softplus(logits).mean()
    torch.testing.assert_close(loss_d, torch.full((4,), 5.0) * (bce_real + bce_fake) / 2)


def test_adversarial_generator_term():
    w = torch.tensor([0.5, 2.0])
    loss = adversarial_generator_loss(torch.zeros(2, 8, 2, 2), w, num_elements=3 * 32 * 32)
    torch.testing.assert_close(loss, math.log(2) * 3072 / w)
    clamped = adversarial_generator_loss(torch.full((2, 8, 2, 2), -50.0), w, 1)
    torch.testing.assert_close(clamped, torch.nn.functional.softplus(torch.tensor(10.0)) / w)
