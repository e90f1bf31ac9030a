import math

import pytest
import torch

from models.precond import EDMPrecond, VEPrecond, VPPrecond, edm_loss_weight, karras_sigma


class ZeroNet(torch.nn.Module):
    """F == 0, and it records what the preconditioning fed it."""

    def forward(self, x, noise_labels, **kwargs):
        self.seen = (x, noise_labels)
        return torch.zeros_like(x)


def test_edm_coefficients_at_generator_sigma():
    c_skip, c_out, c_in, c_noise = EDMPrecond(ZeroNet()).coefficients(torch.tensor(2.5))
    # Hand-computed with sigma_data = 0.5: 0.25/6.5, 1.25/sqrt(6.5), 1/sqrt(6.5), ln(2.5)/4.
    assert c_skip.item() == pytest.approx(0.038462, abs=1e-6)
    assert c_out.item() == pytest.approx(0.490290, abs=1e-6)
    assert c_in.item() == pytest.approx(0.392232, abs=1e-6)
    assert c_noise.item() == pytest.approx(0.229073, abs=1e-6)


def test_edm_denoiser_applies_coefficients():
    net = ZeroNet()
    x = torch.randn(3, 3, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    d = EDMPrecond(net)(x, sigma)
    s = sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(d, 0.25 / (s ** 2 + 0.25) * x)
    torch.testing.assert_close(net.seen[0], x / (s ** 2 + 0.25).sqrt())
    torch.testing.assert_close(net.seen[1], sigma.log() / 4)


def test_vp_and_ve_coefficients():
    sigma = torch.tensor(2.0)
    c_skip, c_out, c_in, c_noise = VPPrecond(ZeroNet()).coefficients(sigma)
    t_inv = (math.sqrt(0.1 ** 2 + 2 * 19.9 * math.log(5.0)) - 0.1) / 19.9
    assert (c_skip.item(), c_out.item()) == (1.0, -2.0)
    assert c_in.item() == pytest.approx(1 / math.sqrt(5))
    assert c_noise.item() == pytest.approx(999 * t_inv, rel=1e-6)
    c_skip, c_out, c_in, c_noise = VEPrecond(ZeroNet()).coefficients(sigma)
    assert (c_skip.item(), c_out.item(), c_in.item()) == (1.0, 2.0, 1.0)
    assert c_noise.item() == pytest.approx(0.0)  # ln(0.5 * 2)
    vp = VPPrecond(ZeroNet())
    assert vp.sigma_min == pytest.approx(math.sqrt(math.exp(0.5 * 19.9e-10 + 0.1e-5) - 1), rel=1e-4)


def test_karras_schedule_of_the_generator_loss():
    assert karras_sigma(0.0).item() == pytest.approx(0.002, rel=1e-6)
    assert karras_sigma(0.8).item() == pytest.approx(24.41, abs=0.01)
    assert karras_sigma(1.0).item() == pytest.approx(80.0, rel=1e-6)


def test_edm_loss_weight():
    assert edm_loss_weight(torch.tensor(0.5)).item() == pytest.approx(8.0)   # (0.25+0.25)/0.0625
    assert edm_loss_weight(torch.tensor(2.0)).item() == pytest.approx(4.25)  # (4+0.25)/1
