"""Non-leaking geometric augmentation (Karras et al. 2022, the EDM paper's appendix), as SiD/SiDA train the fake score.

Every image gets, each with probability p: a y-flip (a fair coin), isotropic scaling, a rotation, anisotropic
scaling and a fractional translation; an x-flip is a fair coin whenever p > 0. The network is told what was
done through a 9-number label (its `augment_labels`, read by `map_augment`), so it can learn the clean
distribution from augmented samples and is asked for it with zero labels, which mean "untouched":

    [xflip, yflip, scale, cos(angle) - 1, sin(angle), aniso * cos(aniso_angle), aniso * sin(aniso_angle), tx, ty]

The layout, the per-transform probabilities and the spreads (log2-scale std 0.2, angle uniform in [-pi, pi],
anisotropic axis turned with probability 0.5, translation std 1/8 of the image) are EDM's `augment_dim=9`
setting, which its CIFAR-10 / FFHQ / AFHQ networks were trained with; keeping them lets those networks (and
the fake score copied from them) read the labels as they learnt to. The resampling filter is ours: bicubic
with reflected borders, applied only to images whose geometry changed, so untouched images stay bit-exact.

Randomness comes from the torch.Generator passed in: the same seed gives the same draw on the same device.
"""

import math

import torch
from torch.nn.functional import affine_grid, grid_sample

AUGMENT_DIM = 9
DEFAULT_P = 0.12                # the reference's CIFAR-10 setting; 0.15 for FFHQ / AFHQ, 0 for ImageNet (no labels)
SCALE_STD = 0.2                 # log2 of the isotropic scale
ANISO_STD = 0.2                 # log2 of the anisotropic stretch
ANISO_TURN = 0.5                # probability that the stretch axis is turned away from x
TRANSLATE_STD = 0.125           # in units of the image width / height
PARAMS = ('xflip', 'yflip', 'scale', 'angle', 'aniso', 'aniso_angle', 'tx', 'ty')


def draw(n, p, generator=None, device='cpu'):
    """[n, 8] raw parameters (columns PARAMS); p = 0 draws nothing and gives the identity (all zeros)."""
    params = torch.zeros(n, len(PARAMS), device=device)
    if p <= 0:
        return params                          # a run without augmentation keeps its random stream

    def uniform():
        return torch.rand(n, device=device, generator=generator)

    def gate(value, prob=p):
        return torch.where(uniform() < prob, value, torch.zeros_like(value))

    xflip = (uniform() < 0.5).float()           # EDM weights the x-flip by 1e8: a coin flip for any p > 0
    yflip = gate((uniform() < 0.5).float())
    scale = gate(torch.randn(n, device=device, generator=generator))
    angle = gate((2 * uniform() - 1) * math.pi)
    aniso = gate(torch.randn(n, device=device, generator=generator))
    aniso_angle = gate((2 * uniform() - 1) * math.pi, ANISO_TURN)
    shift = gate(torch.randn(2, n, device=device, generator=generator))    # one gate moves both axes
    return torch.stack([xflip, yflip, scale, angle, aniso, aniso_angle, shift[0], shift[1]], dim=1)


def labels(params):
    """[n, 9] augment labels: zero exactly where nothing was done."""
    xflip, yflip, scale, angle, aniso, aniso_angle, tx, ty = params.unbind(1)
    # As in EDM, (aniso, aniso_angle) and (-aniso, aniso_angle + pi) share a label.
    return torch.stack([xflip, yflip, scale, angle.cos() - 1, angle.sin(),
                        aniso * aniso_angle.cos(), aniso * aniso_angle.sin(), tx, ty], dim=1)


def _rotation(angle):
    c, s = angle.cos(), angle.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _scaling(sx, sy):
    return torch.diag_embed(torch.stack([sx, sy], -1))


def sampling_matrix(params, height, width):
    """[n, 2, 3] for affine_grid: where each output pixel reads the input (both in [-1, 1] coordinates).

    Built in pixel units about the image centre (x right, y down), as the inverse of: scale, then rotate,
    then stretch, then translate; pixel units keep rotations rigid on non-square images.
    """
    _, _, scale, angle, aniso, aniso_angle, tx, ty = params.unbind(1)
    s, a = (scale * SCALE_STD).exp2(), (aniso * ANISO_STD).exp2()
    inverse = (_scaling(1 / s, 1 / s) @ _rotation(angle)
               @ _rotation(-aniso_angle) @ _scaling(1 / a, a) @ _rotation(aniso_angle))
    shift = torch.stack([tx * width, ty * height], -1) * TRANSLATE_STD        # pixels
    to_unit = torch.tensor([2 / width, 2 / height], device=params.device)     # pixels -> [-1, 1]
    inverse = inverse * to_unit[:, None] / to_unit                             # diag(to_unit) @ M @ diag(1 / to_unit)
    offset = -(inverse @ (shift * to_unit)[..., None])                        # reads at M (x - t): content moves by +t
    return torch.cat([inverse, offset], dim=-1)


def apply(images, params):
    """Augment [n, C, H, W] images with [n, 8] parameters from `draw` (flips, then the geometric transform)."""
    n, _, height, width = images.shape
    per_image = (n, 1, 1, 1)
    x = torch.where(params[:, 0].bool().reshape(per_image), images.flip(3), images)
    x = torch.where(params[:, 1].bool().reshape(per_image), x.flip(2), x)
    theta = sampling_matrix(params, height, width).to(x.dtype)
    warped = grid_sample(x, affine_grid(theta, list(x.shape), align_corners=False), mode='bicubic',
                         padding_mode='reflection', align_corners=False)
    moved = labels(params)[:, 2:].ne(0).any(dim=1)
    return torch.where(moved.reshape(per_image), warped, x)


def augment(images, p, generator=None):
    """(augmented images, [n, 9] labels) with probability p per transform."""
    params = draw(images.shape[0], p, generator, images.device)
    return apply(images, params), labels(params)
