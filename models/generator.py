"""The one-step generator: a denoiser evaluated once at sigma = init_sigma on pure noise.

I/O contract (identical in PyTorch and every exported graph, see docs/bundles.md):
  inputs : noise float32 [N,C,H,W] standard normal (scaled by init_sigma inside);
           class_labels int64 [N]  or  text_embeds float32 [N, 1+T, D]  (or nothing, unconditional)
  outputs: images uint8 [N,H,W,3]  (+ images_float float32 [N,C,H,W] in [-1,1] if return_float)
Latent generators carry a `decoder` (the VAE's): noise is then a latent, x_g a (scaled) latent, and the images
come out at the VAE's resolution with 3 channels; the decoder is part of the module, so of every exported graph.
"""

import torch


class OneStepGenerator(torch.nn.Module):
    def __init__(self, denoiser, init_sigma=2.5, return_float=False, decoder=None):
        super().__init__()
        self.denoiser = denoiser
        self.decoder = decoder
        self.init_sigma = float(init_sigma)
        self.return_float = return_float
        self.label_dim = denoiser.label_dim
        self.text_dim = getattr(denoiser, 'text_dim', None) or getattr(denoiser.model, 'text_dim', 0)

    def one_hot(self, class_labels):
        """int64 [N] -> one-hot float [N, label_dim]; float inputs are taken as already one-hot."""
        if class_labels is None or class_labels.is_floating_point():
            return class_labels
        classes = torch.arange(self.label_dim, device=class_labels.device)
        return (class_labels.reshape(-1, 1) == classes).to(torch.float32)

    def denoise(self, noise, class_labels=None, text_embeds=None, augment_labels=None):
        """The generator's float output x_g in data space (not clipped): what training differentiates."""
        if self.label_dim and class_labels is None:
            raise ValueError(f'this generator is class-conditional ({self.label_dim} classes): pass class_labels')
        if self.text_dim and text_embeds is None:
            raise ValueError('this generator is text-conditioned: pass text_embeds')
        return self.denoiser(self.init_sigma * noise, self.init_sigma, class_labels=self.one_hot(class_labels),
                             augment_labels=augment_labels, text_embeds=text_embeds)

    def forward(self, noise, class_labels=None, text_embeds=None):
        x = self.denoise(noise, class_labels, text_embeds)
        if self.decoder is not None:
            x = self.decoder(x)
        images = to_uint8_nhwc(x)
        return (images, x.clamp(-1, 1)) if self.return_float else images


def to_uint8_nhwc(x):
    """[-1,1] float NCHW -> uint8 NHWC with 3 channels (grey images are repeated).

    x*127.5 + 128 then floor, the StyleGAN/EDM convention (it rounds x*127.5 + 127.5 to nearest).
    """
    x = (x * 127.5 + 128).clamp(0, 255).floor().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1)


class VaeDecoder(torch.nn.Module):
    """latent (times the VAE's scaling factor, as diffusion models see it) -> image in [-1, 1], float32 out."""

    def __init__(self, vae, scaling_factor, shift_factor=None):
        super().__init__()
        self.vae, self.scaling_factor, self.shift_factor = vae, float(scaling_factor), shift_factor

    def forward(self, latents):
        z = latents / self.scaling_factor + (self.shift_factor or 0.0)
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(z.to(dtype), return_dict=False)[0].to(torch.float32)
