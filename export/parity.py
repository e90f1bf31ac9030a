"""The parity gate: an exported generator must reproduce eager PyTorch on fixed seeds and conditions.

Every runtime is checked the same way: at several batch sizes, from seeds 0..N-1 (the project's one
seed-to-noise function) with conditions cycling through the classes (or fixed prompts), compare the
float output (max abs error) and the uint8 images (fraction of pixels more than one level apart).
"""

import dataclasses

import torch

from models.seeds import example_inputs

PROMPTS = ['a photo of a red car', 'a ship at sea', 'a small bird on a branch']


@dataclasses.dataclass
class Tolerance:
    max_abs_float: float
    max_frac_pixels_off_by_more_than_1: float


TOLERANCES = {
    'fp32': Tolerance(1e-3, 0.0005),
    'fp16': Tolerance(5e-2, 0.02),
    'bf16': Tolerance(1.5e-1, 0.10),
}


def parity_inputs(config, batch, text_encoder=None):
    """The example inputs for batch `batch` (seeds 0..batch-1), with real prompts' embeddings for text models."""
    text_embeds = None
    if config.condition['kind'] == 'text':
        if text_encoder is None:
            from models.text_encoder import bundle_text_encoder
            text_encoder = bundle_text_encoder(config)
        text_embeds = text_encoder.encode([PROMPTS[i % len(PROMPTS)] for i in range(batch)])
    return example_inputs(config, batch, text_embeds=text_embeds)


def compare(reference, candidate):
    """reference/candidate: (images uint8 NHWC, images_float NCHW) as torch tensors."""
    ref_u8, ref_f = reference
    cand_u8, cand_f = candidate
    max_abs = (ref_f.double() - cand_f.double()).abs().max().item()
    off = ((ref_u8.int() - cand_u8.int()).abs() > 1).float().mean().item()
    return {'max_abs_float': max_abs, 'frac_pixels_off_by_more_than_1': off}


def run_parity(run, generator, config, precision='fp32', batch_sizes=(1, 3, 8), text_encoder=None):
    """run(inputs: dict of CPU tensors) -> (images uint8, images_float) on CPU. Returns the gate's report."""
    tol = TOLERANCES[precision]
    rows = []
    ref_gen = generator.float().eval()
    was = ref_gen.return_float
    ref_gen.return_float = True
    try:
        for batch in batch_sizes:
            inputs = parity_inputs(config, batch, text_encoder)
            with torch.no_grad():
                device = next(ref_gen.parameters()).device
                reference = tuple(t.cpu() for t in ref_gen(**{k: v.to(device) for k, v in inputs.items()}))
            candidate = tuple(torch.as_tensor(t).cpu() for t in run(inputs))
            shapes_ok = candidate[0].shape == reference[0].shape and candidate[1].shape == reference[1].shape
            row = {'batch': batch, 'shapes_match': shapes_ok, **(compare(reference, candidate) if shapes_ok else {})}
            row['passed'] = bool(shapes_ok and row['max_abs_float'] <= tol.max_abs_float
                                 and row['frac_pixels_off_by_more_than_1'] <= tol.max_frac_pixels_off_by_more_than_1)
            rows.append(row)
    finally:
        ref_gen.return_float = was
    return {'precision': precision, 'tolerance': dataclasses.asdict(tol), 'seeds': 'range(batch)',
            'batches': rows, 'passed': all(r['passed'] for r in rows)}


class ParityError(RuntimeError):
    """An export failed its parity gate (and --force was not given)."""


def gate(report, what, force):
    if report['passed']:
        return
    worst = max(report['batches'], key=lambda r: r.get('max_abs_float', float('inf')))
    message = (f'{what} failed the parity gate at {report["precision"]}: batch {worst["batch"]} max abs error '
               f'{worst.get("max_abs_float", "n/a")}, {worst.get("frac_pixels_off_by_more_than_1", "n/a")} of pixels off by '
               f'more than 1 level (tolerance {report["tolerance"]}); refusing it (use --force to keep it anyway)')
    if not force:
        raise ParityError(message)
