import pytest

from export.compiled import export_compiled
from export.manifest import read_manifest


@pytest.mark.slow
def test_torch_compile_target_passes_the_gate_and_is_recorded(class_bundle):
    entry = export_compiled(class_bundle, precision='fp32', mode='default', buckets=(1, 3), device='cpu')
    assert entry['parity']['passed'] and set(entry['warmup_seconds']) == {1, 3}
    # The compiled generator is the eager one, in floats too (one compile covers both; compiling is slow on a CPU).
    assert all(row['max_abs_float'] <= 1e-4 for row in entry['parity']['batches']), entry['parity']
    assert read_manifest(class_bundle)['exports']['torch_compile-fp32']['runtime'] == 'torch.compile'
