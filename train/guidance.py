"""Classifier-free guidance of an EDM-style teacher (Ho & Salimans 2022) for `sida train distill --guidance`.

SiD-LSG's "long guidance" (Zhou et al. 2024, arXiv 2406.01561): only the teacher's prediction in the generator loss
is guided; the fake score stays unguided. The unconditional prediction is the teacher's with its condition (class
one-hot or text embeddings) zeroed, which is what label dropout (`sida train teacher --label-dropout`) trained it on
(models/unets.py). Stable-Diffusion teachers are guided by `models.diffusers_teacher.Guided` instead.
"""

import torch

CONDITIONS = ('class_labels', 'text_embeds')    # what is zeroed for the unconditional prediction; nothing else


class ClassifierFreeGuidance(torch.nn.Module):
    """D(x, sigma, uncond) + scale * (D(x, sigma, cond) - D(x, sigma, uncond)), called like the denoiser it wraps.

    Both predictions come from one forward pass over the batch twice over (conditional half first), so guidance costs
    one wider teacher call, not two.
    """

    def __init__(self, denoiser, scale):
        super().__init__()
        self.denoiser, self.scale = denoiser, float(scale)

    def forward(self, x, sigma, **kwargs):
        dropped = [k for k in CONDITIONS if kwargs.get(k) is not None]
        if not dropped:
            raise ValueError('classifier-free guidance needs a condition to drop: pass class_labels or text_embeds')
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])     # scalar or per sample
        # Other tensors (augment labels) reach both halves unchanged; non-tensor kwargs are passed as they are.
        doubled = {k: torch.cat([v, torch.zeros_like(v) if k in dropped else v]) if torch.is_tensor(v) else v
                   for k, v in kwargs.items()}
        cond, uncond = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **doubled).chunk(2)
        return uncond + self.scale * (cond - uncond)
