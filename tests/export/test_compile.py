"""torch.compile as an export: the parity gate, the manifest, and the compiled code carried to a fresh process."""

import json
import os
import subprocess
import sys

import pytest

from export.compile_cache import load_artifacts
from export.compiled import CompileOptions
from export.manifest import read_manifest

SERVE = '''
import json, sys
from models.bundle import load_bundle
from serve.backends import CompiledBackend
backend = CompiledBackend(load_bundle(sys.argv[1]), 'cpu', buckets=(1,))
backend.warmup()
print(json.dumps(backend.describe()))
'''


def run(args, cache, timeout=600, helpers=0):
    """A fresh process whose compile cache directory is `cache` (inductor's own default left out of it), with
    `helpers` side-by-side compile processes."""
    env = {k: v for k, v in os.environ.items() if k != 'TORCHINDUCTOR_CACHE_DIR'} | {'SIDA_CACHE_DIR': str(cache),
                                                                                    'SIDA_COMPILE_PROCESSES': str(helpers)}
    r = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_exported_compile_passes_the_gate_and_a_fresh_process_loads_it_instead_of_compiling(class_bundle, tmp_path, monkeypatch):
    """One CPU compile with every switch on: `sida export compile` gates it at fp32 and writes the compiled code into the
    bundle and the persisted cache directory; a restarted server process takes the exported options and compiles no
    graph itself; and the bundle alone fills an empty cache directory (a new machine)."""
    exported = run(['-m', 'sida.cli', 'export', 'compile', '--bundle', str(class_bundle), '--device', 'cpu', '--precision',
                    'fp32', '--mode', 'default', '--freezing', '--channels-last', '--buckets', '1,2'], tmp_path / 'machine',
                   helpers=1)
    # Bucket 2 compiled in a helper process meanwhile (SIDA_COMPILE_PROCESSES); this one loaded it from the cache.
    assert 'buckets [2] compile side by side in 1 helper process(es)' in exported.stderr + exported.stdout
    assert 'failed' not in exported.stderr + exported.stdout
    entry = read_manifest(class_bundle)['exports']['torch_compile-fp32']
    assert entry['cache']['counters']['fxgraph_miss'] == 1 and entry['cache']['counters']['fxgraph_hit'] >= 1, entry['cache']
    assert entry['runtime'] == 'torch.compile' and entry['options']['spec'] == 'default+freezing+channels-last'
    # The compiled generator is the eager one, in floats too (compiling is slow on a CPU: one compile covers both).
    assert entry['parity']['passed'] and all(row['max_abs_float'] <= 1e-4 for row in entry['parity']['batches']), entry['parity']
    assert entry['cache']['counters']['fxgraph_miss'] >= 1 and entry['cache']['artifacts'].get('inductor')

    served = json.loads(run(['-c', SERVE, str(class_bundle)], tmp_path / 'machine').stdout.splitlines()[-1])
    cache = served['compile_cache']
    assert served['compile_options'] == 'default+freezing+channels-last'
    assert cache['dir'] == str(tmp_path / 'machine' / 'compile') and cache['exported']['loaded'].get('inductor')
    assert cache['counters']['fxgraph_hit'] >= 1 and cache['counters']['fxgraph_miss'] == 0, cache

    # On a GPU the artifacts carry the Triton kernels too; on a CPU, C++ kernels are rebuilt from the cached source.
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'new-machine'))
    assert load_artifacts(class_bundle / entry['cache']['file']).get('inductor')
    assert list((tmp_path / 'new-machine').rglob('fxgraph/*/*'))


def test_compile_options_read_and_write_one_spelling():
    options = CompileOptions.parse('max-autotune+freezing+channels-last')
    assert (options.mode, options.freezing, options.channels_last) == ('max-autotune', True, True)
    assert str(options) == 'max-autotune+freezing+channels-last' and str(CompileOptions.parse('default')) == 'default'
    assert options.inductor_options()['freezing'] and options.inductor_options()['force_layout_optimization']
    assert options.cuda_graphs() and not CompileOptions('max-autotune-no-cudagraphs').cuda_graphs()
    for bad, words in (('fast', 'compile mode must be one of'), ('default+fp8', "unknown switch 'fp8'")):
        with pytest.raises(ValueError, match=words):
            CompileOptions.parse(bad)
