"""`sida bench generate` on a tiny bundle, CPU: the result file's schema, skips, percentiles and FLOPs."""

import datetime
import json

import pytest
import torch

from bench.flops import count_flops, generator_flops, mfu, peak_tflops
from bench.generate import parse_backend
from bench.record import percentiles, time_runs, warm_up
from tests.bench.conftest import invoke, only_json

TOP_LEVEL = {'device', 'driver', 'torch', 'commit', 'date', 'settings', 'results'}


def measured(result):
    return [r for r in result['results'] if 'images_per_s' in r]


def test_result_file_has_the_schema_and_lives_under_device_and_date(generate_run):
    out, path, result = generate_run
    assert TOP_LEVEL <= set(result)
    assert result['torch'] == torch.__version__ and result['driver'] is None      # CPU: no GPU driver
    assert result['date'] == datetime.date.today().isoformat()
    assert path.parent.name == result['device_slug'] and path.parent.name.startswith('cpu-')
    assert path.name == f'{result["date"]}-tiny.json'
    assert path.with_suffix('.png').is_file()
    assert result['settings']['batches'] == [1, 2] and result['settings']['runs'] == 2
    assert 'incomplete' not in result['settings']             # the finished run replaced the per-row partial file
    for row in result['results']:
        assert row['kind'] == 'generate' and row['backend'] and row['batch'] in (1, 2)
    for row in measured(result):
        assert {'images_per_s', 'p50_ms', 'p90_ms', 'p99_ms', 'mfu', 'peak_gpu_memory_mib', 'warmup_s', 'setup_s'} <= set(row)
        assert row['runs'] == 2 and row['images_per_s'] > 0
        assert row['peak_gpu_memory_mib'] is None                                  # CPU run


def test_every_row_is_handed_on_as_it_is_measured(tiny_bundle):
    """A run cut short by a time limit keeps what it measured: the CLI writes the file after every row."""
    from bench.generate import run_generate
    seen = []
    run_generate(str(tiny_bundle), ['torch-fp32', 'tensorrt'], [1, 2], runs=1, warmup=0, warmup_seconds=0, device='cpu',
                 progress=False, log=lambda m: None, on_row=lambda info, settings, rows: seen.append(
                     (settings['model'], [(r['backend'], r['batch']) for r in rows])))
    assert [rows for _, rows in seen] == [[('torch-fp32', 1)], [('torch-fp32', 1), ('torch-fp32', 2)],
                                          [('torch-fp32', 1), ('torch-fp32', 2), ('tensorrt', 1), ('tensorrt', 2)]]
    assert len({model for model, _ in seen}) == 1


def test_each_backend_is_measured_at_each_batch_or_skipped_with_the_reason(generate_run):
    _, _, result = generate_run
    got = {(r['backend'], r['batch']) for r in measured(result)}
    assert got == {('torch-fp32', 1), ('torch-fp32', 2), ('onnxruntime', 1), ('onnxruntime', 2)}
    skipped = [r for r in result['results'] if r['backend'] == 'tensorrt']
    assert [r['batch'] for r in skipped] == [1, 2]
    assert all('TensorRT is not installed' in r['skipped'] for r in skipped)


def test_a_local_triton_row_is_timed_through_a_real_pytriton_server(tiny_bundle, tmp_path):
    """`--backends triton` without --triton-url starts PyTriton around the torch backend and times KServe v2 calls."""
    pytest.importorskip('pytriton', reason='nvidia-pytriton (which ships tritonserver) is not installed')
    invoke('generate', '--bundle', tiny_bundle, '--backends', 'triton', '--batch', '2', '--runs', '2', '--warmup', '1',
           '--warmup-seconds', '0.1', '--out', tmp_path, '--name', 'triton', '--no-plot')
    _, result = only_json(tmp_path)
    [row] = result['results']
    assert 'error' not in row and 'skipped' not in row, row
    assert row['backend'] == 'triton' and row['batch'] == 2 and row['images_per_s'] > 0
    assert row['setup_s']['inner_backend'] == 'torch-fp32 on cpu (PyTriton, KServe v2 HTTP)'


def test_onnx_export_and_session_are_setup_not_measurement(generate_run):
    _, _, result = generate_run
    onnx = [r for r in measured(result) if r['backend'] == 'onnxruntime']
    assert onnx[0]['io'] == 'host' and onnx[0]['setup_s']['export_s'] > 0 and onnx[0]['setup_s']['session_s'] > 0
    eager = [r for r in measured(result) if r['backend'] == 'torch-fp32']
    assert eager[0]['io'] == 'device' and 'export_s' not in eager[0]['setup_s']


def test_percentiles_are_ordered(generate_run):
    _, _, result = generate_run
    for row in measured(result):
        assert row['min_ms'] <= row['p50_ms'] <= row['p90_ms'] <= row['p99_ms'] <= row['max_ms']
    summary = percentiles([0.001 * k for k in range(1, 101)])
    assert summary['p50_ms'] == 50.5 and abs(summary['p99_ms'] - 99.01) < 1e-9


def test_flops_per_image_are_counted_and_the_same_at_every_batch(generate_run, tiny_bundle):
    _, _, result = generate_run
    from models.bundle import read_config
    expected = generator_flops(read_config(tiny_bundle), 1)
    assert expected > 0
    assert {r['flops_per_image'] for r in measured(result)} == {expected}
    assert generator_flops(read_config(tiny_bundle), 4) == 4 * expected


def test_mfu_uses_the_given_peak(generate_run):
    _, _, result = generate_run
    assert result['settings']['peak_tflops_bf16_dense'] == 0.5
    for row in measured(result):
        assert abs(row['mfu'] - row['flops_per_image'] * row['images_per_s'] / 0.5e12) < 1e-12


def test_flop_counter_matches_the_analytic_count_of_a_convolution():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, torch.randn(2, 3, 16, 16)) == 2 * 2 * 8 * 3 * 3 * 3 * 16 * 16    # 2 * N * Cout * Cin * k * k * H * W


def test_peaks_come_from_the_device_table_or_the_override():
    assert peak_tflops('NVIDIA H100 80GB HBM3')[0] == 989
    assert peak_tflops('NVIDIA H100 PCIe')[0] == 756
    assert peak_tflops('NVIDIA H200')[0] == 989
    assert peak_tflops('NVIDIA A100-SXM4-80GB')[0] == 312
    assert peak_tflops('NVIDIA L4')[0] == 121
    assert peak_tflops('NVIDIA L40S')[0] is None
    assert peak_tflops('NVIDIA L40S', 362)[0] == 362
    assert mfu(1e9, 100, 1) == 0.1 and mfu(None, 100, 1) is None and mfu(1e9, 100, None) is None


def test_backend_names_are_runtime_and_precision():
    assert parse_backend('compile-bf16') == ('compile', 'bf16')
    assert parse_backend('onnxruntime') == ('onnxruntime', 'fp32')
    assert parse_backend('tensorrt') == ('tensorrt', 'fp16')
    for bad in ('torch-int4', 'tflite'):
        try:
            parse_backend(bad)
        except ValueError as e:
            assert bad.split('-')[0] in str(e)
        else:
            raise AssertionError(bad)


def test_unknown_backend_is_a_usage_error(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from bench.cli import bench
    result = CliRunner().invoke(bench, ['generate', '--bundle', str(tiny_bundle), '--backends', 'tflite', '--out', str(tmp_path)])
    assert result.exit_code == 2 and 'tflite' in result.output
    assert not list(tmp_path.iterdir())


def test_warm_up_runs_at_least_the_calls_and_the_seconds_and_timing_stops_at_its_budget():
    calls = []
    seconds, done = warm_up(lambda: calls.append(1), 3, 0.05)
    assert done == len(calls) >= 3 and seconds >= 0.05
    assert warm_up(lambda: calls.append(1), 2, 0)[1] == 2
    import time
    assert len(time_runs(lambda: time.sleep(0.02), 100, max_seconds=0.05)) == 3      # stops past the budget, after 3 runs
    assert len(time_runs(lambda: None, 5)) == 5


def test_latent_text_preset_is_a_random_sd_shaped_one_step_bundle(tmp_path, monkeypatch):
    pytest.importorskip('diffusers', reason='the [t2i] extra is not installed')
    from bench import presets
    from models.bundle import validate_bundle
    path = presets.resolve_bundle('preset:tiny-sd', work_dir=tmp_path, log=lambda m: None)
    config = validate_bundle(path)
    assert config.latent and config.condition['encoder'] == 'clip:.' and config.image_resolution == 16
    assert config.name == 'random-tiny-sd' and 'random init' in config.provenance['method']
    assert presets.resolve_bundle('preset:tiny-sd', work_dir=tmp_path, log=lambda m: pytest.fail('rebuilt')) == path


def test_compile_variants_are_rows_with_the_parity_gate_and_a_profile(tiny_bundle, tmp_path, monkeypatch):
    """Each variant is a row per batch with its options and the export parity gate; --profile writes the table and the
    trace. torch.compile is stubbed to the eager module: the plumbing is tested here, compiling in tests/export."""
    import export.compiled
    compiled = []
    monkeypatch.setattr(export.compiled.torch, 'compile', lambda module, **kw: compiled.append(kw['options']) or module)
    invoke('generate', '--bundle', tiny_bundle, '--backends', 'compile-fp32', '--compile-variants', 'default,default+freezing',
           '--batch', '2', '--runs', '2', '--warmup', '1', '--warmup-seconds', '0', '--device', 'cpu', '--profile',
           tmp_path / 'profile', '--out', tmp_path / 'out', '--name', 'variants', '--no-plot')
    _, result = only_json(tmp_path / 'out')
    rows = result['results']
    assert [(r['compile_options'], r['freezing'], r['batch']) for r in rows] == [('default', False, 2), ('default+freezing', True, 2)]
    assert compiled == [{}, {'freezing': True}]
    assert all(r['parity']['passed'] and r['parity']['max_abs_float'] == 0 for r in rows)
    assert rows[0]['profile']['calls'] == 5 and rows[0]['setup_s']['compile_cache']['dir']
    assert {p.name for p in (tmp_path / 'profile').iterdir()} >= {'profile-compile-fp32-default-b2.txt',
                                                                 'profile-compile-fp32-default-freezing-b2.json.gz'}


def test_a_misspelt_compile_variant_is_a_usage_error(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from bench.cli import bench
    result = CliRunner().invoke(bench, ['generate', '--bundle', str(tiny_bundle), '--compile-variants', 'default+frozen'])
    assert result.exit_code == 2 and "unknown switch 'frozen'" in result.output


def test_profile_summary_counts_gpu_busy_time_once_and_the_gaps_between():
    from bench.profiling import summarize
    s = summarize([(0, 10), (5, 12), (20, 30), (40, 41)], calls=2, wall_s=50e-6)     # microseconds; overlap counted once
    assert s['gpu_ops_per_call'] == 2 and s['gpu_busy_ms_per_call'] == 23 / 1e3 / 2 and s['gaps_per_call'] == 1
    assert s['largest_gap_us'] == 10 and abs(s['gpu_busy_share'] - 23 / 50) < 1e-12


def test_components_time_a_latent_generators_denoiser_and_decoder_apart(tmp_path):
    """--components: one row per (part, batch) with its own FLOPs; together they are the generator's."""
    pytest.importorskip('diffusers', reason='the [t2i] extra is not installed')
    from bench import presets
    from bench.components import component_flops
    from models.bundle import read_config
    path = presets.resolve_bundle('preset:tiny-sd', work_dir=tmp_path / 'presets', log=lambda m: None)
    invoke('generate', '--bundle', path, '--backends', 'torch-fp32', '--components', '--compile-variants', 'default',
           '--batch', '2', '--runs', '2', '--warmup', '1', '--warmup-seconds', '0', '--device', 'cpu', '--out',
           tmp_path / 'out', '--name', 'parts', '--no-plot')
    _, result = only_json(tmp_path / 'out')
    parts = [r for r in result['results'] if r['kind'] == 'component']
    assert [(r['component'], r['batch']) for r in parts] == [('denoiser', 2), ('decoder', 2)]
    assert all(r['p50_ms'] > 0 and r['images_per_s'] > 0 and r['compile_options'] == 'default' for r in parts)
    flops = component_flops(read_config(path), 2)
    assert generator_flops(read_config(path), 2) >= flops['denoiser'] + flops['decoder'] > flops['denoiser'] > 0
    assert [r['flops_per_image'] for r in parts] == [flops['denoiser'] / 2, flops['decoder'] / 2]


def test_a_rerun_of_the_same_name_and_day_gets_its_own_file_and_a_run_keeps_its_file(tmp_path):
    from bench.record import machine, write_result
    first_run, second_run = machine(gpu=False), machine(gpu=False)
    partial = write_result(tmp_path, first_run, 'same', {'incomplete': True}, [{'row': 1}], plot=False)
    whole = write_result(tmp_path, first_run, 'same', {}, [{'row': 1}, {'row': 2}], plot=False)
    assert whole == partial and whole.name == f'{datetime.date.today().isoformat()}-same.json'
    rerun = write_result(tmp_path, second_run, 'same', {}, [{'row': 3}], plot=False)
    assert rerun.name == whole.stem + '-2.json'
    assert [r['row'] for r in json.loads(whole.read_text())['results']] == [1, 2]      # the first run's rows survive
    assert json.loads(rerun.read_text())['run_id'] != json.loads(whole.read_text())['run_id']
