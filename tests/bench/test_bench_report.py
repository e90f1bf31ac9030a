"""`sida bench report` rebuilds the README (tables, skips, charts) from the result files it finds."""

import json
import shutil

from click.testing import CliRunner

from bench.cli import bench
from bench.report import load_results, targets


def test_report_rewrites_the_readme_from_every_result(generate_run, tmp_path):
    out, path, result = generate_run
    results = tmp_path / 'results'
    shutil.copytree(out, results)
    older = results / path.parent.name / f'2000-01-01-{result["name"]}.json'
    older.write_text(json.dumps({**result, 'date': '2000-01-01', 'results': []}))       # same name, older: not shown
    readme = tmp_path / 'README.md'
    readme.write_text('stale\n')
    outcome = CliRunner().invoke(bench, ['report', '--results', str(results), '--readme', str(readme)], catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    text = readme.read_text()
    assert 'stale' not in text and text.startswith('# Benchmarks')
    assert f'## {result["device"]}' in text and '### tiny' in text
    assert '| backend | device | io | batch | p50 ms |' in text
    assert text.count('| torch-fp32 |') == 2 and text.count('| onnxruntime |') == 2
    assert text.count('`tensorrt` skipped: TensorRT is not installed') == 1
    assert f'![tiny](results/{path.parent.name}/{path.stem}.png)' in text
    assert (results / path.parent.name / f'{path.stem}.png').is_file()
    assert '2000-01-01' not in text


def test_targets_are_checked_only_where_results_answer_them():
    gen = [{'kind': 'generate', 'backend': 'torch-fp32', 'batch': 256, 'device': 'cuda', 'images_per_s': 100.0, 'p50_ms': 9.0},
           {'kind': 'generate', 'backend': 'compile-bf16', 'batch': 256, 'device': 'cuda', 'images_per_s': 350.0, 'p50_ms': 3.0,
            'mfu': 0.41},
           {'kind': 'generate', 'backend': 'compile-bf16', 'batch': 1, 'device': 'cuda', 'images_per_s': 500.0, 'p50_ms': 2.0}]
    ddpmpp = {'model': 'random-ddpmpp-cifar10'}
    checks = {t: (m, ok) for t, m, ok in targets([{'results': gen, 'settings': ddpmpp}])}
    assert checks['DDPM++ CIFAR-10, batch 256: best backend >= 3x torch-fp32 images/s (same run)'] == ('compile-bf16: 3.50x', True)
    assert checks['DDPM++ CIFAR-10, batch 256: MFU >= 40% of bf16 dense peak'][1] is True
    assert checks['DDPM++ CIFAR-10, batch-1 latency on the GPU <= 1.5 ms (p50)'] == ('compile-bf16: 2.000 ms', False)
    assert not any('HTTP' in t or 'teacher' in t for t in checks)
    # Another model's rows answer none of them; nor does a ratio across two runs; a row that failed parity is left out.
    assert not targets([{'results': gen, 'settings': {'model': 'cifar10-cond'}}])
    split = {t for t, _, _ in targets([{'results': gen[:1], 'settings': ddpmpp}, {'results': gen[1:], 'settings': ddpmpp}])}
    assert not any('3x' in t for t in split)
    failed = [{**gen[1], 'images_per_s': 900.0, 'parity': {'passed': False}}, *gen]
    checks = {t: m for t, m, _ in targets([{'results': failed, 'settings': ddpmpp}])}
    assert checks['DDPM++ CIFAR-10, batch 256: best backend >= 3x torch-fp32 images/s (same run)'] == 'compile-bf16: 3.50x'


def test_training_target_reads_the_sid_cifar_rows_at_batch_128_on_the_gpu():
    row = dict(kind='train', method='sid', network='ddpmpp-cifar10', batch=128, device='cuda')
    rows = [{**row, 'backend': 'bf16-compile', 'images_per_s': 480.0},
            {**row, 'backend': 'bf16-compile-cg', 'images_per_s': 520.5},
            {**row, 'backend': 'sida-bf16-compile-cg', 'method': 'sida', 'images_per_s': 900.0},   # other method
            {**row, 'backend': 'bf16', 'batch': 256, 'images_per_s': 990.0},                      # other batch
            {**row, 'backend': 'bf16-compile-cg+conv_1x1_as_mm=0', 'images_per_s': 700.0}]       # not the CLI's settings
    target = 'SiD training, DDPM++ CIFAR-10, batch 128: >= 500 generator img/s'
    checks = {t: (m, ok) for t, m, ok in targets([{'results': rows}])}
    assert checks[target] == ('bf16-compile-cg: 520.5', True)
    checks = {t: (m, ok) for t, m, ok in targets([{'results': rows[:1]}])}
    assert checks[target] == ('bf16-compile: 480.0', False)
    assert target not in {t for t, _, _ in targets([{'results': [{**rows[0], 'device': 'cpu'}]}])}


def test_results_recorded_with_the_old_eager_names_read_as_torch(tmp_path):
    (tmp_path / 'cpu').mkdir()
    rows = [{'kind': 'generate', 'backend': 'eager-bf16', 'batch': 1}, {'kind': 'train', 'backend': 'eager-x', 'batch': 1}]
    (tmp_path / 'cpu' / '2026-01-01-old.json').write_text(json.dumps({'name': 'old', 'date': '2026-01-01', 'results': rows}))
    [result] = load_results(tmp_path).values()
    assert [r['backend'] for r in result['results']] == ['torch-bf16', 'eager-x']    # training variants keep their names


def test_a_same_day_rerun_is_the_run_shown(tmp_path):
    """The rerun's file is `<name>-2.json`, which sorts before `<name>.json` as text: the newer write wins."""
    from bench.record import machine, write_result
    write_result(tmp_path, machine(gpu=False), 'x', {}, [{'kind': 'generate', 'backend': 'torch-fp32', 'batch': 1}], plot=False)
    rerun = write_result(tmp_path, machine(gpu=False), 'x', {}, [{'kind': 'generate', 'backend': 'torch-fp32', 'batch': 2}],
                         plot=False)
    assert rerun.name.endswith('-x-2.json')
    [shown] = load_results(tmp_path).values()
    assert shown['_path'] == rerun and shown['results'][0]['batch'] == 2


def test_open_loop_rows_get_their_table_and_the_429_target_reads_the_worst_rate():
    from bench.report import open_loop_table
    row = dict(kind='http-open-loop', sent_rps=99.0, requests_per_s=60.0, images_per_s=60.0, p50_ms=5.0, p99_ms=40.0)
    rows = [{**row, 'offered_rps': 100.0, 'time_to_429_p99_ms': 12.0, 'errors': {'429': 3}},
            {**row, 'offered_rps': 400.0, 'time_to_429_p99_ms': 61.5, 'errors': {'429': 90, 'ReadTimeout': 1}},
            {**row, 'offered_rps': 10.0, 'errors': {}}]
    checks = {t: (m, ok) for t, m, ok in targets([{'results': rows}])}
    assert checks['HTTP overload (open loop) answered with 429 within 50 ms p99'] == ('61.5 ms at 400 req/s', False)
    later = [{**row, 'offered_rps': 500.0, 'time_to_429_p99_ms': 20.0, 'errors': {'429': 9}}]     # a later run folder
    checks = {t: (m, ok) for t, m, ok in targets([{'date': '2026-12-06', 'results': rows}],
                                                 [{'date': '2026-12-07', 'results': later}])}
    assert checks['HTTP overload (open loop) answered with 429 within 50 ms p99'] == ('20.0 ms at 500 req/s (2026-12-07)', True)
    table = open_loop_table(rows)
    assert table[0].startswith('| offered req/s | sent req/s |') and len(table) == 5
    assert table[3].endswith('| 61.5 | – | 429: 90, ReadTimeout: 1 |')
