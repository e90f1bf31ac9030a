import os
import tempfile
import traceback
from types import SimpleNamespace

import pytest
import torch

from models.architecture import adm, ddpmpp, ncsnpp

# Under pytest-xdist (`make test` runs one worker per core, plus one) each worker and the processes it starts get an equal share
# of the cores: torch's default of one thread per core in every worker would oversubscribe them.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
    _THREADS = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ['OMP_NUM_THREADS'] = _THREADS
    torch.set_num_threads(int(_THREADS))
    # The same for inductor's pool of compile processes (each one more torch import when the cores are busy anyway).
    os.environ['TORCHINDUCTOR_COMPILE_THREADS'] = _THREADS

# The compile tests check the gate, the caches and the exported code, not the speed of CPU kernels: scalar C++ builds in
# about 40% less time than inductor's vectorised kind on a 2-core machine.
os.environ.setdefault('TORCHINDUCTOR_VEC_ISA_OK', '0')

# The compile backend persists inductor's caches under $SIDA_CACHE_DIR (export/compile_cache.py): not in $HOME from tests.
os.environ.setdefault('SIDA_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'sida-test-cache'))


def tiny_ddpmpp(**kw):
    base = dict(resolution=16, label_dim=10, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                attn_resolutions=(8,), dropout=0.0, augment_dim=9)
    return ddpmpp(**{**base, **kw})


def tiny_ncsnpp(**kw):
    base = dict(resolution=16, label_dim=0, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                attn_resolutions=(8,), dropout=0.0, augment_dim=0)
    return ncsnpp(**{**base, **kw})


def tiny_adm(**kw):
    base = dict(resolution=16, label_dim=5, model_channels=64, channel_mult=(1, 2), num_blocks=1,
                attn_resolutions=(8,), dropout=0.0)
    return adm(**{**base, **kw})


def perturb_(module, scale=0.05, seed=0):
    """EDM zero-initialises output layers; perturbing every weight makes outputs exercise all of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def sida_in_process(*args):
    """`sida ARGS` in this process (the console script's entry point `main`, through click's runner): exit code, stdout
    and stderr as the console script gives them, without a Python and torch start-up per call. An exception that
    escaped the command (a crash, which the console script would print as a traceback) lands in stderr as one."""
    from click.testing import CliRunner

    from sida.cli import main
    result = CliRunner().invoke(main, [str(a) for a in args])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += ''.join(traceback.format_exception(result.exception))
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=stderr)
