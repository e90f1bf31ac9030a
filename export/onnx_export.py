"""ONNX export of a bundle's generator, checked by ONNX Runtime against eager PyTorch.

The graph keeps the generator contract: `noise` [N,C,H,W] float32 (+ `class_labels` int64 [N] or
`text_embeds` float32 [N,1+T,D]) in; `images` uint8 [N,H,W,3] and `images_float` float32 [N,C,H,W] out;
the batch axis is dynamic. fp16/bf16 exports run the UNet body in that precision (weights stored
so); preconditioning, quantisation and the I/O stay float32/uint8.
"""

import time
from pathlib import Path

import torch

from export.manifest import record_export, runtime_versions
from export.parity import gate, run_parity
from models.bundle import load_bundle

PRECISIONS = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
MIN_OPSET = 17          # LayerNorm/GroupNorm-era ops the exporters rely on
TWO_GB = 2 ** 31


class ExportError(RuntimeError):
    pass


class _ClassGraph(torch.nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, noise, class_labels):
        return self.generator(noise, class_labels=class_labels)


class _TextGraph(_ClassGraph):
    def forward(self, noise, text_embeds):
        return self.generator(noise, text_embeds=text_embeds)


class _PlainGraph(_ClassGraph):
    def forward(self, noise):
        return self.generator(noise)


def graph_for(generator, kind):
    """A module whose positional inputs are exactly the ONNX inputs, named as in the contract."""
    cls, names = {'class': (_ClassGraph, ['noise', 'class_labels']), 'text': (_TextGraph, ['noise', 'text_embeds']),
                  'none': (_PlainGraph, ['noise'])}[kind]
    return cls(generator).eval(), names


def io_spec(config):
    c, r = config.channels, config.resolution
    inputs = [{'name': 'noise', 'dtype': 'float32', 'shape': ['N', c, r, r]}]
    if config.condition['kind'] == 'class':
        inputs.append({'name': 'class_labels', 'dtype': 'int64', 'shape': ['N']})
    elif config.condition['kind'] == 'text':
        tokens, dim = 1 + config.condition['max_tokens'], config.condition['dim']
        inputs.append({'name': 'text_embeds', 'dtype': 'float32', 'shape': ['N', tokens, dim]})
    side, ch = config.image_resolution, config.image_channels      # latent bundles decode to the VAE's size
    outputs = [{'name': 'images', 'dtype': 'uint8', 'shape': ['N', side, side, 3]},
               {'name': 'images_float', 'dtype': 'float32', 'shape': ['N', ch, side, side]}]
    return inputs, outputs


def prepare_generator(bundle_dir, precision):
    bundle = load_bundle(bundle_dir, return_float=True)
    generator = bundle.generator
    if precision != 'fp32':
        generator.denoiser.model.to(PRECISIONS[precision])
        generator.denoiser.compute_dtype = PRECISIONS[precision]
    return bundle, generator


def export_onnx(bundle_dir, precision='fp32', opset=18, force=False, batch_sizes=(1, 3, 8), exporter='dynamo', log=print):
    """Export, check, gate; returns the manifest entry. Raises ExportError / ParityError with the reason."""
    if precision not in PRECISIONS:
        raise ExportError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
    if opset < MIN_OPSET:
        raise ExportError(f'opset {opset} is too old: sida graphs need opset {MIN_OPSET} or newer')
    import onnx
    bundle, generator = prepare_generator(bundle_dir, precision)
    config = bundle.config
    graph, input_names = graph_for(generator, config.condition['kind'])
    example = {k: v for k, v in _example(config).items() if k in input_names}
    args = tuple(example[name] for name in input_names)
    out_dir = Path(bundle_dir) / 'exports' / f'onnx-{precision}'
    out_dir.mkdir(parents=True, exist_ok=True)
    try:                # whatever fails from here on, the export leaves nothing behind
        path = out_dir / 'model.onnx'
        large = sum(p.numel() * p.element_size() for p in generator.parameters()) > TWO_GB * 0.9
        started = time.perf_counter()
        used, fallback_reason = exporter, None
        try:
            _export(graph, args, input_names, path, opset, dynamo=exporter == 'dynamo', external=large)
        except Exception as e:                       # the dynamo exporter fails on some graphs: say so and fall back
            if exporter != 'dynamo':
                raise ExportError(f'ONNX export failed: {type(e).__name__}: {e}') from None
            fallback_reason = f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
            log(f'dynamo exporter failed ({fallback_reason}); falling back to the TorchScript exporter')
            used = 'torchscript'
            _export(graph, args, input_names, path, opset, dynamo=False, external=large)
        onnx.checker.check_model(str(path))
        export_seconds = time.perf_counter() - started

        try:
            session = ort_session(path)
        except Exception as e:   # e.g. ONNX Runtime's CPU kernels have no bf16 for several ops
            raise ExportError(f'ONNX Runtime here cannot run the {precision} graph ({str(e).splitlines()[0][:200]}); '
                              'export fp32 or fp16 for ONNX Runtime, or use TensorRT for bf16') from None
        report = run_parity(lambda inputs: session.run(['images', 'images_float'], {k: v.numpy() for k, v in inputs.items()}),
                            load_bundle(bundle_dir, return_float=True).generator, config, precision, batch_sizes)
        inputs, outputs = io_spec(config)
        entry = {'runtime': 'onnxruntime', 'file': str(path.relative_to(Path(bundle_dir))), 'precision': precision, 'opset': opset,
                 'exporter': used, 'exporter_fallback_reason': fallback_reason, 'external_data': large, 'inputs': inputs,
                 'outputs': outputs, 'dynamic_axes': {'batch': 0}, 'parity': report, 'forced': bool(force and not report['passed']),
                 'export_seconds': round(export_seconds, 2), 'build_device': 'cpu', 'bundle_sha256': config.sha256,
                 'versions': {**runtime_versions('torch', 'onnx', 'onnxruntime', 'onnxscript')}}
        gate(report, f'ONNX export {path}', force)
    except BaseException:
        _discard(out_dir)
        raise
    record_export(bundle_dir, f'onnx-{precision}', entry)
    return entry


def _discard(out_dir):
    """A refused export leaves nothing behind: its files, and its folder once empty."""
    for name in ('model.onnx', 'model.onnx.data'):
        (out_dir / name).unlink(missing_ok=True)
    for folder in (out_dir, out_dir.parent):      # onnx-<precision>/, then exports/ if this was its only export
        try:
            folder.rmdir()
        except OSError:      # something else in it (not ours): leave it
            return


def _example(config):
    from export.parity import parity_inputs
    return parity_inputs(config, 2)


def _export(graph, args, input_names, path, opset, dynamo, external):
    output_names = ['images', 'images_float']
    if dynamo:
        batch = torch.export.Dim('batch', min=1, max=4096)
        shapes = {name: {0: batch} for name in input_names}
        program = torch.onnx.export(graph, args, dynamo=True, input_names=input_names, output_names=output_names,
                                    dynamic_shapes=shapes, opset_version=opset, optimize=True, verbose=False)
        program.save(str(path), external_data=external)
    else:
        axes = {name: {0: 'N'} for name in input_names + output_names}
        torch.onnx.export(graph, args, str(path), dynamo=False, input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=opset)


def ort_session(path, providers=None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    providers = providers or [p for p in ('CUDAExecutionProvider', 'CPUExecutionProvider') if p in available]
    return ort.InferenceSession(str(path), options, providers=providers)
