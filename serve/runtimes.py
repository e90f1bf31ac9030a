"""The backend vocabulary shared by `sida serve`, `sida generate` and `sida bench`: `<runtime>[-<precision>]`.

    torch         eager PyTorch            fp32 (default) | bf16 (autocast)
    compile       torch.compile            fp32 | fp16 | bf16 (default: bf16 on CUDA, fp32 on CPU)
    onnxruntime   a recorded ONNX export   fp32 (default) | fp16
    tensorrt      a recorded TRT engine    fp16 (default) | fp32 | bf16 | fp8
    triton        a Triton server          (its model decides)
"""

PRECISIONS = {
    'torch': ('fp32', 'bf16'),
    'compile': ('fp32', 'fp16', 'bf16'),
    'onnxruntime': ('fp32', 'fp16'),
    'tensorrt': ('fp32', 'fp16', 'bf16', 'fp8'),
    'triton': ('fp32',),
}
RUNTIMES = tuple(PRECISIONS)
# What a bare runtime name means where no device decides it (bench rows name their precision).
DEFAULT_PRECISION = {'torch': 'fp32', 'compile': 'bf16', 'onnxruntime': 'fp32', 'tensorrt': 'fp16', 'triton': 'fp32'}

BACKEND_HELP = ('<runtime>[-<precision>]: torch|compile|onnxruntime|tensorrt|triton, optionally with -fp32|-fp16|-bf16 '
                '(e.g. torch-bf16); auto picks the fastest that works here.')


def parse_backend(text):
    """'torch-bf16' -> ('torch', 'bf16'); a bare runtime -> (runtime, None), the runtime's own default."""
    runtime, _, precision = str(text).strip().partition('-')
    if runtime not in PRECISIONS:
        raise ValueError(f'unknown backend {text!r}: use <runtime>[-<precision>] with runtime one of {", ".join(RUNTIMES)}')
    if precision and precision not in PRECISIONS[runtime]:
        raise ValueError(f'backend {text!r}: {runtime} precisions are {", ".join(PRECISIONS[runtime])}')
    return runtime, precision or None


def backend_callback(ctx, param, value):
    """click callback: a misspelt --backend is a usage error (exit 2) before anything loads."""
    if value is not None and value != 'auto':
        import click
        try:
            parse_backend(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return value
