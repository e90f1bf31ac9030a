"""Adversarial SiD (Zhou et al., ICLR 2025; docs/method.md §4): the fake score's own encoder is the discriminator.

Logits are the channel mean of f_psi's bottleneck feature map ([B,1,h,w] for UNets): no new
parameters. Each BCE is ONE scalar, the mean over the whole per-GPU batch and logit map; the method's
results depend on that per-GPU batch, so it is kept on purpose (each rank averages its own batch).
"""

import torch
from torch.nn.functional import binary_cross_entropy_with_logits as bce

from models.precond import edm_loss_weight
from train.sid import as_per_sample, finite_rows, per_sample_sum


def discriminator_logits(bottleneck):
    return bottleneck.mean(dim=1, keepdim=True)


def fake_score_and_discriminator_loss(fake_score, x_g, x_real, sigma, eps, sigma_data=0.5, real_augment_labels=None,
                                      **cond):
    """One pass of f_psi on noisy fakes (denoised + logits) and an encoder-only pass on noisy reals.

    The real and fake of a pair share sigma and noise, and the fakes were generated with the real
    batch's labels (class-matched). Augmented reals bring their own labels (real_augment_labels); cond's
    augment_labels are the fakes'. Returns per-kept-sample (denoising loss, discriminator loss).
    """
    n = as_per_sample(sigma, x_g) * eps
    denoised, bottleneck_fake = fake_score(x_g + n, sigma, output='both', **cond)
    real_cond = cond if real_augment_labels is None else {**cond, 'augment_labels': real_augment_labels}
    bottleneck_real = fake_score(x_real + n, sigma, output='bottleneck', **real_cond)
    keep = finite_rows(x_g, denoised, bottleneck_fake, bottleneck_real)
    weight = edm_loss_weight(sigma[keep], sigma_data)
    loss_psi = weight * per_sample_sum((denoised[keep] - x_g[keep]) ** 2)
    logit_real = discriminator_logits(bottleneck_real[keep])
    logit_fake = discriminator_logits(bottleneck_fake[keep])
    bce_batch = (bce(logit_real, torch.ones_like(logit_real)) + bce(logit_fake, torch.zeros_like(logit_fake))) / 2
    return loss_psi, weight * bce_batch


def adversarial_generator_loss(bottleneck_fake, w, num_elements):
    """Non-saturating GAN term per sample: BCE(clamp(logit, -10, 10), 1) averaged over the batch and map
    (a scalar: the batch's mean "fakeness"), divided by each sample's SiD normaliser w and scaled to
    pixel units (times C*H*W) so it sits on the SiD loss's scale."""
    logits = discriminator_logits(bottleneck_fake).clamp(-10, 10)
    return bce(logits, torch.ones_like(logits)) * num_elements / w
