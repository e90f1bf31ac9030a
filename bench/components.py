"""A latent generator's two parts timed apart: the denoiser (the UNet's one evaluation) and the VAE decoder, each
compiled the way the whole generator is (prepare_generator: precision, channels-last, the model switches, and the
same inductor options), each with its own FLOPs and MFU. Where a latent generator's time goes, which the whole
generator's row cannot say.
"""

import torch

from bench.flops import count_flops, meta_generator, meta_inputs, mfu
from bench.record import percentiles, time_runs, warm_up
from models.seeds import example_inputs


class _Denoise(torch.nn.Module):
    """The generator up to (not including) its decoder: x_g, a scaled latent."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, noise, class_labels=None, text_embeds=None):
        return self.generator.denoise(noise, class_labels, text_embeds)


def component_flops(config, batch):
    """{'denoiser': FLOPs, 'decoder': FLOPs} of one call on `batch` images (meta device, nothing computed)."""
    generator = meta_generator(config)
    inputs = meta_inputs(config, batch)
    latents = torch.empty_like(inputs['noise'])
    return {'denoiser': count_flops(_Denoise(generator), **inputs), 'decoder': count_flops(generator.decoder, latents)}


def run_components(bundle, batches, precision, options, device, runs=20, warmup=3, max_seconds=10.0, peak=None,
                   log=print):
    """Rows per (component, batch): latency percentiles, images/s, FLOPs per image, MFU."""
    from export.compiled import inductor_options_for, prepare_generator
    if bundle.generator.decoder is None:
        raise ValueError(f'{bundle.config.name} has no VAE decoder: --components is for latent generators')
    generator = prepare_generator(bundle.generator, precision, options, device)
    compile_ = lambda m: torch.compile(m, options=inductor_options_for(m, options), fullgraph=True, dynamic=False)  # noqa: E731
    parts = {'denoiser': compile_(_Denoise(generator)), 'decoder': compile_(generator.decoder)}
    cuda = torch.device(device).type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for batch in batches:
        inputs = {k: v.to(device) for k, v in example_inputs(bundle.config, batch).items()}
        with torch.inference_mode():
            latents = parts['denoiser'](**inputs).clone()
        flops = component_flops(bundle.config, batch)
        for name, part in parts.items():
            args = inputs if name == 'denoiser' else {'latents': latents}

            def call():
                with torch.inference_mode():
                    if cuda and options.cuda_graphs():
                        torch.compiler.cudagraph_mark_step_begin()
                    part(**args)
            warmup_s, _ = warm_up(call, max(warmup, 3), 0.5, sync)        # compile, then CUDA graphs recorded
            times = time_runs(call, runs, sync, max_seconds)
            images_per_s = batch * len(times) / sum(times)
            per_image = flops[name] / batch
            rows.append({'kind': 'component', 'component': name, 'batch': batch, 'precision': precision,
                         'compile_options': str(options), 'device': device, 'runs': len(times), **percentiles(times),
                         'images_per_s': images_per_s, 'flops_per_image': per_image,
                         'tflops': per_image * images_per_s / 1e12, 'mfu': mfu(per_image, images_per_s, peak),
                         'warmup_s': round(warmup_s, 3)})
            util = f', MFU {100 * rows[-1]["mfu"]:.1f}%' if rows[-1]['mfu'] is not None else ''
            log(f'{name:>9} batch {batch:>3}: p50 {rows[-1]["p50_ms"]:9.3f} ms  {images_per_s:9.1f} img/s  '
                f'{per_image / 1e9:8.1f} GFLOP/img{util}')
    return rows
