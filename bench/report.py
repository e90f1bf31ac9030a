"""`sida bench report`: rebuild bench/README.md (tables, plots, targets) from every result JSON found.

The newest file of each (device, run name) is shown; older ones stay on disk as history. Plots are
redrawn from the JSON, so the README, the tables and the charts always agree.

    sida bench report [--results bench/results] [--readme bench/README.md]
"""

import json
import os
from pathlib import Path

from bench.plots import backend_label, plot_result

DASH = '–'


def _fmt(value, scale=1.0, percent=False):
    """Numbers as people read them in a table: 0.174, 6.44, 35.8, 1,234; '–' for missing."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if not isinstance(value, (int, float)):
        return str(value).replace('|', '/')
    value = value * scale
    if percent:
        return f'{100 * value:.1f}%'
    size = abs(value)
    if size >= 100 or (isinstance(value, int) and size >= 10):
        return f'{value:,.0f}'
    if size >= 10:
        return f'{value:.1f}'
    if size >= 1 or size == 0:
        return f'{value:.2f}'
    return f'{value:.3g}'


def _table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in rows]
    return lines


def current_backend_name(row):
    """Results recorded before the shared vocabulary name eager PyTorch `eager-*`; today it is `torch-*` (as in `sida serve`)."""
    backend = row.get('backend')
    if row.get('kind', 'generate') == 'generate' and isinstance(backend, str) and backend.startswith('eager-'):
        row['backend'] = 'torch-' + backend[len('eager-'):]
    return row


def _read_result(path):
    """A result file (its rows with today's backend names, its path kept), or None if the JSON is not one."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict) or not isinstance(result.get('results'), list):
        return None
    result['_path'] = path
    result['results'] = [current_backend_name(r) for r in result['results']]
    return result


def _recency(result):
    """Newer runs compare greater: by date, then by when the file was written, to the second, then by run id (its
    nanosecond start, hex) (a same-day rerun is `<name>-2.json`, which sorts before `<name>.json` as text)."""
    return result.get('date', ''), result.get('created', ''), result.get('run_id', ''), result['_path'].name


def load_results(results_dir):
    """Every result file, newest first within each (device slug, name); old backend names read as today's."""
    found = {}
    for path in sorted(Path(results_dir).glob('*/*.json')):
        result = _read_result(path)
        if result is None:
            continue
        name = result.get('name') or path.stem[11:]
        key = (result.get('device_slug') or path.parent.name, name)
        if key not in found or _recency(result) > _recency(found[key]):
            found[key] = result
    return found


def load_run_folders(results_dir):
    """{device slug: [result, ...]} of the result files inside run folders (`<slug>/<run>/*.json`, each with its own
    README): not tabled here, but their rows count for the targets."""
    nested = {}
    for path in sorted(Path(results_dir).glob('*/*/*.json')):
        result = _read_result(path)
        if result is not None:
            nested.setdefault(result.get('device_slug') or path.parent.parent.name, []).append(result)
    return nested


def generate_table(rows):
    done = [r for r in rows if 'images_per_s' in r]
    lines = _table(['backend', 'device', 'io', 'batch', 'p50 ms', 'p90 ms', 'p99 ms', 'img/s', 'peak GPU MiB', 'GFLOP/img', 'MFU',
                    'warm-up s'],
                   [[backend_label(r), r.get('device', DASH), r.get('io', DASH), str(r['batch']), _fmt(r['p50_ms']), _fmt(r.get('p90_ms')),
                     _fmt(r['p99_ms']), _fmt(r['images_per_s']), _fmt(r.get('peak_gpu_memory_mib')),
                     _fmt(r.get('flops_per_image'), scale=1e-9), _fmt(r.get('mfu'), percent=True), _fmt(r.get('warmup_s'))]
                    for r in done])
    return lines + _not_measured(rows)


def teacher_table(rows):
    done = [r for r in rows if 'images_per_s' in r]
    return _table(['model', 'NFE', 'batch', 'precision', 'ms / image', 'img/s', 'student speed-up', 'MFU', 'quality (provenance)'],
                  [[r['backend'], str(r['nfe']), str(r['batch']), r['precision'], _fmt(r['ms_per_image']), _fmt(r['images_per_s']),
                    _fmt(r['speedup']) + 'x' if r['role'] == 'teacher' else DASH, _fmt(r.get('mfu'), percent=True),
                    ', '.join(f'{k} {_fmt(v)}' for k, v in (r.get('metrics') or {}).items()) or DASH] for r in done])


def http_table(rows):
    return _table(['concurrency', 'requests', 'img/s', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'server queue p50 ms',
                   'server generate p50 ms', 'errors'],
                  [[str(r['concurrency']), str(r['requests']), _fmt(r['images_per_s']), _fmt(r['requests_per_s']),
                    _fmt(r.get('p50_ms')), _fmt(r.get('p90_ms')), _fmt(r.get('p99_ms')), _fmt(r.get('server_queue_p50_ms')),
                    _fmt(r.get('server_generate_p50_ms')),
                    ', '.join(f'{k}: {v}' for k, v in r['errors'].items()) or '0'] for r in rows if r.get('kind') == 'http'])


def open_loop_table(rows):
    return _table(['offered req/s', 'sent req/s', 'send lag p99 ms', 'ok req/s', 'img/s', 'p50 ms', 'p90 ms', 'p99 ms',
                   '429 p99 ms', 'mean batch', 'errors'],
                  [[_fmt(r['offered_rps']), _fmt(r['sent_rps']), _fmt(r.get('send_lag_p99_ms')), _fmt(r['requests_per_s']),
                    _fmt(r['images_per_s']), _fmt(r.get('p50_ms')), _fmt(r.get('p90_ms')), _fmt(r.get('p99_ms')),
                    _fmt(r.get('time_to_429_p99_ms')), _fmt(r.get('mean_batch_size')),
                    ', '.join(f'{k}: {v}' for k, v in r['errors'].items()) or '0'] for r in rows if r.get('kind') == 'http-open-loop'])


def train_table(rows):
    done = [r for r in rows if 'images_per_s' in r]
    lines = _table(['config', 'method', 'precision', 'compile', 'channels-last', 'batch', 'img/s', 'p50 ms / iteration',
                    'peak GPU GiB', 'MFU'],
                   [[r['backend'], r['method'], r['precision'], _fmt(r['compile']), _fmt(r['channels_last']), str(r['batch']),
                     _fmt(r['images_per_s']), _fmt(r['p50_ms']), _fmt(r.get('peak_gpu_memory_mib'), scale=1 / 1024),
                     _fmt(r.get('mfu', r.get('mfu_vs_bf16_peak')), percent=True)] for r in done])
    return lines + _not_measured(rows)


def _not_measured(rows):
    """Skipped backends once each (not once per batch), and errors with their batch."""
    lines, seen = [], set()
    for r in rows:
        if 'skipped' in r and r['backend'] not in seen:
            seen.add(r['backend'])
            lines.append(f'- `{r["backend"]}` skipped: {r["skipped"]}')
        elif 'error' in r:
            lines.append(f'- `{r["backend"]}` batch {r.get("batch")} failed: {r["error"][:300]}')
    return [''] + lines if lines else []


def soak_table(rows):
    done = [r for r in rows if r.get('kind') == 'soak']
    if not done:
        return []
    first, last = done[0], done[-1]
    return _table(['minutes', 'requests', 'img/s (mean)', 'RSS MiB first / last / max', 'GPU MiB first / last', 'errors'],
                  [[_fmt(last['t_s'] / 60), str(sum(r['requests'] for r in done)),
                    _fmt(sum(r['images_per_s'] for r in done) / len(done)),
                    f'{_fmt(first["rss_mib"])} / {_fmt(last["rss_mib"])} / {_fmt(max(r["rss_mib"] for r in done))}',
                    f'{_fmt(first.get("gpu_mib"))} / {_fmt(last.get("gpu_mib"))}',
                    str(sum(sum(r['errors'].values()) for r in done))]])


def fid_rounding_table(rows):
    done = [r for r in rows if r.get('kind') == 'fid-rounding']

    def delta(r, key):
        return DASH if f'{key}_delta' not in r else f'{r[f"{key}_delta"]:+.3g} ({100 * r[f"{key}_rel_delta"]:+.3f}%)'
    return _table(['Inception weights', 'file MB', 'gzipped MB', 'FID test vs train', 'change', 'FID noisy vs train',
                   'change', 'feature error mean / max', 'FID same images vs fp32'],
                  [[r['weights'], _fmt(r['file_mb']), _fmt(r.get('file_mb_gzip')),
                    f"{r['fid_test_vs_train']:.2f}", delta(r, 'fid_test_vs_train'),
                    f"{r['fid_noisy_vs_train']:.2f}", delta(r, 'fid_noisy_vs_train'),
                    DASH if 'feature_rel_error_mean' not in r else
                    f'{100 * r["feature_rel_error_mean"]:.3f}% / {100 * r["feature_rel_error_max"]:.3f}%',
                    _fmt(r.get('fid_same_images_vs_fp32'))] for r in done])


TABLES = {'generate': generate_table, 'teacher-vs-student': teacher_table, 'http': http_table, 'http-open-loop': open_loop_table,
          'train': train_table, 'soak': soak_table, 'fid-rounding': fid_rounding_table}

# The issues' targets for the CIFAR-10 DDPM++-size networks on the H100 ([bench]: generation; [trainer]: training),
# checked where the data exist.


SPEED_MODEL = 'random-ddpmpp-cifar10'      # the [speed] targets' network (preset:ddpmpp-cifar10), not the zoo's


def _gpu_generate_rows(result, batch):
    return [r for r in result['results'] if r.get('kind') == 'generate' and 'images_per_s' in r and r['batch'] == batch
            and r.get('device', '').startswith('cuda') and (r.get('parity') or {}).get('passed', True)]


def targets(results, run_folders=()):
    """(target, measured, met) for each issue target the device's results can answer. The generation targets are the
    DDPM++ CIFAR-10 network's, read from the results and the run folders' results, and the 3x ratio compares rows of
    one run (same machine state); the others from the results alone."""
    rows = [r for result in results for r in result['results']]
    speed = [res for res in [*results, *run_folders] if res.get('settings', {}).get('model') == SPEED_MODEL]
    out = []
    ratios = []
    for res in speed:
        eager = [r for r in _gpu_generate_rows(res, 256) if r['backend'] == 'torch-fp32']
        fast = [r for r in _gpu_generate_rows(res, 256) if r['backend'] != 'torch-fp32']
        if eager and fast:
            best = max(fast, key=lambda r: r['images_per_s'])
            ratios.append((best['images_per_s'] / eager[0]['images_per_s'], best))
    if ratios:
        ratio, best = max(ratios, key=lambda rb: rb[0])
        out.append(('DDPM++ CIFAR-10, batch 256: best backend >= 3x torch-fp32 images/s (same run)',
                    f'{backend_label(best)}: {ratio:.2f}x', ratio >= 3))
    wide = [r for res in speed for r in _gpu_generate_rows(res, 256) if r.get('mfu') is not None and r['backend'] != 'torch-fp32']
    if wide:
        best = max(wide, key=lambda r: r['mfu'])
        out.append(('DDPM++ CIFAR-10, batch 256: MFU >= 40% of bf16 dense peak', f'{backend_label(best)}: {100 * best["mfu"]:.1f}%',
                    best['mfu'] >= 0.4))
    one = [r for res in speed for r in _gpu_generate_rows(res, 1)]
    if one:
        best = min(one, key=lambda r: r['p50_ms'])
        out.append(('DDPM++ CIFAR-10, batch-1 latency on the GPU <= 1.5 ms (p50)', f'{backend_label(best)}: {best["p50_ms"]:.3f} ms',
                    best['p50_ms'] <= 1.5))
    http = {r['concurrency']: r for r in rows if r.get('kind') == 'http'}
    if 1 in http and 'p50_ms' in http[1]:
        out.append(('HTTP p50 at concurrency 1 <= 10 ms', f'{http[1]["p50_ms"]:.2f} ms', http[1]['p50_ms'] <= 10))
    if 1 in http and 128 in http and http[1]['images_per_s']:
        ratio = http[128]['images_per_s'] / http[1]['images_per_s']
        out.append(('HTTP concurrency 128 >= 10x concurrency-1 images/s, no errors',
                    f'{ratio:.1f}x, {http[128]["error_count"]} errors', ratio >= 10 and http[128]['error_count'] == 0))
    # The [serve-gpu] issue's: overload is refused quickly rather than queued. The worst rate of the latest day that
    # measured it (results and run folders): a later server replaces an earlier one's numbers.
    refused = [(res.get('date', ''), r) for res in [*results, *run_folders] for r in res['results']
               if r.get('kind') == 'http-open-loop' and r.get('time_to_429_p99_ms') is not None]
    if refused:
        latest = max(date for date, _ in refused)
        worst = max((r for date, r in refused if date == latest), key=lambda r: r['time_to_429_p99_ms'])
        out.append(('HTTP overload (open loop) answered with 429 within 50 ms p99',
                    f'{worst["time_to_429_p99_ms"]:.1f} ms at {worst["offered_rps"]:g} req/s' + (f' ({latest})' if latest else ''),
                    worst['time_to_429_p99_ms'] <= 50))
    train = [r for r in rows if r.get('kind') == 'train' and r.get('method') == 'sid' and r.get('network') == 'ddpmpp-cifar10'
             and r.get('batch') == 128 and 'images_per_s' in r and r.get('device', '').startswith('cuda')
             and '+' not in r['backend']]       # variants with inductor overrides (bench/train_variants.py) are not the CLI's
    if train:       # the [trainer] issue's target
        best = max(train, key=lambda r: r['images_per_s'])
        out.append(('SiD training, DDPM++ CIFAR-10, batch 128: >= 500 generator img/s', f'{best["backend"]}: {best["images_per_s"]:.1f}',
                    best['images_per_s'] >= 500))
    # The latest measurement (results and run folders), not the best: a newer student or backend replaces the old.
    teachers = [(res['date'], r) for res in [*results, *run_folders] for r in res['results']
                if r.get('kind') == 'teacher-vs-student' and r.get('role') == 'teacher' and r.get('nfe') == 35]
    if teachers:
        date, latest = max(teachers, key=lambda dr: dr[0])
        out.append(('student vs teacher (35 NFE Heun) per-image speed-up >= 30x (latest)',
                    f'{latest["speedup"]:.1f}x ({date}, batch {latest["batch"]})', latest['speedup'] >= 30))
    return out


def _device_order(item):
    slug, results = item
    return (slug.startswith('cpu'), slug)


def render(results_dir, readme):
    """The README's text; redraws each shown run's plots on the way."""
    readme, results_dir = Path(readme), Path(results_dir)
    found, nested = load_results(results_dir), load_run_folders(results_dir)
    by_device = {}
    for (slug, _), result in sorted(found.items()):
        by_device.setdefault(slug, []).append(result)
    lines = ['# Benchmarks', '',
             f'Generated by `sida bench report` from the result files in `{os.path.relpath(results_dir, readme.parent)}/` '
             '(one JSON per run: device, driver, torch, commit, date, settings, rows; PNG charts beside it).',
             'Do not edit by hand: measure, then run `sida bench report`.', '',
             '```bash',
             'sida bench generate --bundle BUNDLE_OR_preset:ddpmpp-cifar10 --backends torch-fp32,torch-bf16,compile-bf16,onnxruntime,'
             'tensorrt,triton --batch 1,8,64,256 --runs 50',
             'sida bench teacher-vs-student --teacher TEACHER_DIR_OR_PKL --student BUNDLE --batch 64 --runs 10',
             'sida serve --bundle BUNDLE &   sida bench http --url http://127.0.0.1:8000 --concurrency 1,8,32,128 --duration 20',
             'sida bench http --url http://127.0.0.1:8000 --rate 50,200,800 --duration 20   # open loop: Poisson arrivals, requests/s',
             'sida bench http --url http://127.0.0.1:8000 --rate 400,800 --client-processes 8   # above a few hundred requests/s: '
             'several client processes',
             'sida bench train --variants fp32,bf16,bf16-compile --batch 128 --iters 20',
             'sida bench fid-rounding --data cifar10-jpeg.tar.gz --images 300   # FID with fp16/bf16/int8-rounded Inception weights',
             'bash bench/scale_train.sh OUT DATA   # several GPUs: distillation scaling (sida bench scaling over its runs)',
             'bash bench/scale_serve.sh OUT        # several GPUs: serving scaling (sida bench serve-scaling over its results)',
             'sida bench report',
             '```', '',
             '- Latency is wall time per call, fenced by `torch.cuda.synchronize()` on GPU; warm-up calls, compilation, '
             'exports, engine builds and session creation are timed apart (`warm-up s`, `setup_s` in the JSON).',
             '- `io device`: inputs already on the device, images left there (the network alone); `io host`: CPU tensors in, '
             'uint8 images back in host memory (as the server calls a backend).',
             '- MFU = FLOPs per image (`torch.utils.flop_counter`) x images/s / the device\'s dense bf16 peak '
             '(H100 SXM and H200 989, A100 312, L4 121 TFLOP/s, or `--peak-tflops`), also for fp32 rows; none on CPU unless given.',
             '- `preset:NAME` bundles are random weights of a reference network (speed does not depend on weights); '
             'quality columns come from trained bundles\' `provenance.metrics` only.', '']
    if not by_device:
        lines += ['No results yet.', '']
    for slug, results in sorted(by_device.items(), key=_device_order):
        first = results[0]
        lines += [f'## {first["device"]}', '']
        checks = targets(results, nested.get(slug, [])) if not slug.startswith('cpu') else []   # GPU targets
        if checks:
            lines += ['Targets of the [bench] / [speed] (generation) and [trainer] (training) issues, DDPM++-size CIFAR-10 '
                      'networks, checked on these results (generation: also those in this device\'s run folders):', '']
            lines += _table(['target', 'measured', 'met'], [[t, m, 'yes' if ok else 'no'] for t, m, ok in checks]) + ['']
        for result in sorted(results, key=lambda r: r['name']):
            path = result['_path']
            kinds = [k for k in TABLES if any(r.get('kind') == k for r in result['results'])]
            lines += [f'### {result["name"]}', '',
                      f'{result["date"]}, commit `{(result.get("commit") or "unknown")[:12]}`, torch {result.get("torch")}, '
                      f'driver {result.get("driver") or DASH}, load average {_fmt((result.get("machine") or {}).get("load_average_1m"))} '
                      f'at the start; [JSON]({os.path.relpath(path, readme.parent)})', '']
            for kind in kinds:
                lines += TABLES[kind](result['results']) + ['']
            for png in plot_result(path):
                lines += [f'![{result["name"]}]({os.path.relpath(png, readme.parent)})', '']
    return '\n'.join(lines).rstrip() + '\n'


def write_report(results_dir='bench/results', readme='bench/README.md'):
    text = render(results_dir, readme)
    readme = Path(readme)
    readme.parent.mkdir(parents=True, exist_ok=True)
    tmp = readme.with_suffix('.md.tmp')
    tmp.write_text(text)
    os.replace(tmp, readme)
    return readme


if __name__ == '__main__':
    import sys
    print(write_report(*sys.argv[1:3]))
