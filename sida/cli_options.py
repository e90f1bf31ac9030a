"""Click pieces every subcommand shares, so an option name means the same thing everywhere.

    --device   auto | cpu | cuda          (auto: cuda when present, else cpu)
    dtypes     fp32 | fp16 | bf16         (one spelling; `torch_dtype` maps them)
"""

import click

# Every command shows its defaults (click renders them; help strings never type them by hand).
CTX = {'help_option_names': ['-h', '--help'], 'show_default': True}

DEVICES = ('auto', 'cpu', 'cuda')
DTYPES = ('fp32', 'fp16', 'bf16')
SAVE_DTYPES = {'fp32': 'float32', 'fp16': 'float16', 'bf16': 'bfloat16'}     # --save-dtype -> the bundle's names


def device_option(help='Where to run: auto = cuda when present, else cpu.'):
    return click.option('--device', type=click.Choice(DEVICES), default='auto', help=help)


def resolve_device(name):
    """'auto' -> 'cuda' or 'cpu'; asking for cuda without one is a usage error, not a traceback."""
    import torch
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine; use --device cpu', param_hint='--device')
    return name


def torch_dtype(name):
    import torch
    return {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[name]


# torch.compile's modes, as `--compile` (train) and `--compile-mode` (serve) take them.
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
# The compile backend's defaults (export.compiled.default_options builds them from these; --help shows them).
CUDA_COMPILE_DEFAULT = 'default+channels-last+fused-affines+channels-last-cat+folded-norm+split-skip+planar-qkv+whole-graph'
CPU_COMPILE_DEFAULT = 'default+fused-affines'


def is_loopback(host):
    """localhost or a loopback address (127.0.0.0/8, ::1): `sida serve` wants API keys on any other host, and
    `sida bench http` loads only these."""
    import ipaddress
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False          # a host name or 0.0.0.0-like wildcard: reachable from elsewhere
