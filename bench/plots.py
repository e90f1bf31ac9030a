"""PNG charts of a result file, written beside it: one chart per kind of row the file holds.

generate: p50 latency and images/s against batch, one line per backend (log-log);
http: images/s and latency against concurrency; http-open-loop: latency against achieved images/s, one point per
offered rate; teacher-vs-student: time per image as bars (log scale)
with the speed-ups; train: images/s per configuration with memory; soak: server memory and images/s over time;
scaling: images/s against GPUs with linear scaling, efficiency per point.
"""

import json
from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _plain_log(ax):
    """Log axes labelled 1, 8, 64 and 0.5, 20, 300 rather than 2^3 or 3x10^2 (y minor ticks labelled when few decades)."""
    from matplotlib.ticker import FuncFormatter, LogFormatter
    plain = FuncFormatter(lambda v, _: f'{v:g}')
    ax.xaxis.set_major_formatter(plain)
    if ax.get_yscale() == 'log':
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(LogFormatter(base=10, labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _measured(rows, kind):
    return [r for r in rows if r.get('kind') == kind and 'images_per_s' in r and 'error' not in r and 'skipped' not in r]


def backend_label(row):
    """compile-bf16 [reduce-overhead+freezing]: the compile options matter as much as the backend."""
    options = row.get('compile_options') or row.get('compile_mode')
    return f'{row["backend"]} [{options}]' if options else row['backend']


def _title(result, what):
    return f'{what}: {result.get("settings", {}).get("model") or result["name"]}\n{result["device"]}, {result["date"]}'


def plot_generate(result, rows, path):
    plt = _plt()
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in dict.fromkeys(backend_label(r) for r in rows):
        mine = sorted((r for r in rows if backend_label(r) == backend), key=lambda r: r['batch'])
        batches = [r['batch'] for r in mine]
        label = f'{backend} ({mine[0]["device"]}, io {mine[0]["io"]})'
        line, = lat.plot(batches, [r['p50_ms'] for r in mine], marker='o', label=label)
        lat.fill_between(batches, [r['p50_ms'] for r in mine], [r['p99_ms'] for r in mine], color=line.get_color(), alpha=0.15)
        thr.plot(batches, [r['images_per_s'] for r in mine], marker='o', color=line.get_color(), label=label)
        for r in mine:
            if r.get('mfu') is not None:
                thr.annotate(f'{100 * r["mfu"]:.0f}%', (r['batch'], r['images_per_s']), fontsize=7, xytext=(3, 3),
                             textcoords='offset points')
    for ax, ylabel in ((lat, 'latency per batch, ms (p50 line, band to p99)'), (thr, 'images / s (labels: MFU)')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('batch size')
        ax.set_ylabel(ylabel)
        ax.grid(True, which='both', alpha=0.3)
        _plain_log(ax)
    # Below both plots, one entry per line: compile variants' names are long and would cover the curves.
    handles, labels = lat.get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', fontsize=7, ncol=1, frameon=False)
    fig.suptitle(_title(result, 'generation'), fontsize=9)
    fig.tight_layout(rect=(0, 0.04 * len(labels) + 0.02, 1, 1))
    fig.set_figheight(4.2 + 0.18 * len(labels))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_http(result, rows, path):
    plt = _plt()
    rows = sorted(rows, key=lambda r: r['concurrency'])
    conc = [r['concurrency'] for r in rows]
    fig, (thr, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    thr.plot(conc, [r['images_per_s'] for r in rows], marker='o')
    for r in rows:
        if r['error_count']:
            thr.annotate(f'{r["error_count"]} errors', (r['concurrency'], r['images_per_s']), fontsize=7, color='tab:red')
    ok = [r for r in rows if 'p50_ms' in r]
    for key, style in (('p50_ms', '-o'), ('p90_ms', '--o'), ('p99_ms', ':o')):
        lat.plot([r['concurrency'] for r in ok], [r[key] for r in ok], style, label=key.replace('_ms', ''))
    thr.set_ylabel('images / s (successful requests)')
    lat.set_ylabel('request latency, ms')
    lat.legend(fontsize=8)
    for ax in (thr, lat):
        ax.set_xscale('log', base=2)
        ax.set_xlabel('concurrent clients')
        ax.grid(True, which='both', alpha=0.3)
    lat.set_yscale('log')
    for ax in (thr, lat):
        _plain_log(ax)
    settings = result.get('settings', {})
    fig.suptitle(f'HTTP load: {settings.get("model")} on {settings.get("server_backend")} ({settings.get("server_device")}), '
                 f'n={settings.get("n")}\n{result["device"]}, {result["date"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_open_loop(result, rows, path):
    plt = _plt()
    rows = sorted(rows, key=lambda r: r['offered_rps'])
    ok = [r for r in rows if 'p50_ms' in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, style in (('p50_ms', '-o'), ('p99_ms', ':o')):
        ax.plot([r['images_per_s'] for r in ok], [r[key] for r in ok], style, label=key.replace('_ms', ''))
    for r in ok:
        errors = f', {r["error_count"]} errors' if r['error_count'] else ''
        ax.annotate(f'{r["offered_rps"]:g} req/s offered{errors}', (r['images_per_s'], r['p99_ms']), fontsize=7, xytext=(3, 3),
                    textcoords='offset points', color='tab:red' if errors else 'black')
    ax.set_xlabel('achieved images / s (successful requests)')
    ax.set_ylabel('latency from scheduled send, ms')
    ax.set_yscale('log')
    ax.grid(True, which='both', alpha=0.3)
    _plain_log(ax)
    ax.legend(fontsize=8)
    settings = result.get('settings', {})
    fig.suptitle(f'HTTP open loop (Poisson): {settings.get("model")} on {settings.get("server_backend")} '
                 f'({settings.get("server_device")}), n={settings.get("n")}\n{result["device"]}, {result["date"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_teacher(result, rows, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r['backend'] for r in rows]
    colors = ['tab:green' if r['role'] == 'student' else 'tab:blue' for r in rows]
    ax.bar(names, [r['ms_per_image'] for r in rows], color=colors)
    for i, r in enumerate(rows):
        text = f'{r["ms_per_image"]:.3g} ms' + (f'\n{r["speedup"]:.1f}x slower' if r['role'] == 'teacher' else '')
        ax.text(i, r['ms_per_image'], text, ha='center', va='bottom', fontsize=8)
    ax.set_yscale('log')
    ax.set_ylabel('time per image, ms (log)')
    s = result.get('settings', {})
    fig.suptitle(f'teacher (EDM Heun) vs one-step student, batch {s.get("batch")}, {s.get("precision")}\n'
                 f'{result["device"]}, {result["date"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_train(result, rows, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([r['backend'] for r in rows], [r['images_per_s'] for r in rows], color='tab:blue')
    for i, r in enumerate(rows):
        extra = f'\n{r["peak_gpu_memory_mib"] / 1024:.1f} GiB' if r.get('peak_gpu_memory_mib') else ''
        ax.text(i, r['images_per_s'], f'{r["images_per_s"]:.0f}{extra}', ha='center', va='bottom', fontsize=7)
    ax.set_ylabel('generator images / s')
    s = result.get('settings', {})
    fig.suptitle(f'distillation throughput: {s.get("network")}, batch {s.get("per_device_batch")}\n'
                 f'{result["device"]}, {result["date"]}', fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=20, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_soak(result, rows, path):
    plt = _plt()
    verdict = result.get('settings', {}).get('verdict', {})
    t = [r['t_s'] / 60 for r in rows]
    fig, (mem, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (('rss_mib', 'server RSS'), ('gpu_mib', 'server GPU memory')):
        if any(r.get(key) is not None for r in rows):
            mem.plot(t, [r.get(key) for r in rows], label=label)
            base = verdict.get(f'{key}_after_warmup')
            if base:
                mem.axhline(base * (1 + verdict['growth_limit']), ls=':', color='tab:red', lw=1,
                            label=f'{label} + {100 * verdict["growth_limit"]:g}%')
    mem.axvspan(0, verdict.get('warmup_s', 60) / 60, color='0.9', label='warm-up')
    mem.set_ylabel('MiB')
    mem.legend(fontsize=8)
    thr.plot(t, [r['images_per_s'] for r in rows])
    thr.set_ylabel('images / s (successful requests)')
    for ax in (mem, thr):
        ax.set_xlabel('minutes')
        ax.grid(True, alpha=0.3)
    settings = result.get('settings', {})
    fig.suptitle(f'Soak: {settings.get("model")} on {settings.get("server_backend")} ({settings.get("server_device")}), '
                 f'{settings.get("concurrency")} clients, {"passed" if verdict.get("passed") else "FAILED"}\n'
                 f'{result["device"]}, {result["date"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_against_gpus(groups, note, ylabel, title, result, path):
    """Images/s against GPUs, a line per group with its dotted linear extension of the 1-GPU point; note(row): the
    label written beside each point."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, group in groups.items():
        group = sorted(group, key=lambda r: r['gpus'])
        gpus = [r['gpus'] for r in group]
        line, = ax.plot(gpus, [r['images_per_s'] for r in group], marker='o', label=label)
        base = next((r for r in group if r['gpus'] == 1), None)
        if base:
            ax.plot(gpus, [base['images_per_s'] * g for g in gpus], ls=':', color=line.get_color())
        for r in group:
            ax.annotate(note(r), (r['gpus'], r['images_per_s']), fontsize=7, textcoords='offset points', xytext=(4, -10))
    ax.set_xlabel('GPUs')
    ax.set_ylabel(f'{ylabel} (dotted: linear)')
    ax.legend(fontsize=7)
    fig.suptitle(f'{title}\n{result["device"]}, {result["date"]}', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _grouped(rows, label):
    groups = {}
    for r in rows:
        groups.setdefault(label(r), []).append(r)
    return groups


def plot_scaling(result, rows, path):
    groups = _grouped(rows, lambda r: f'{r["method"]}, {r["per_gpu_batch"]}/GPU, compile {r["compile"]}'
                                      f'{", DDP" if r.get("ddp") else ""}')
    note = lambda r: f'{100 * r["efficiency"]:.0f}%' if r.get('efficiency') is not None else ''  # noqa: E731
    _plot_against_gpus(groups, note, 'generator images / s', 'distillation scaling', result, path)


def plot_serve_scaling(result, rows, path):
    groups = _grouped(rows, lambda r: f'{r["model"]}{", " + r["layout"] if r["layout"] else ""}, n={r["n"]}')

    def note(r):
        p99 = f', p99@80% {r["load_p99_ms"]:.0f} ms' if r.get('load_p99_ms') is not None else ''
        return (f'{r["speedup"]:.2f}x' if r.get('speedup') else '') + p99
    _plot_against_gpus(groups, note, 'HTTP images / s at saturation', 'serving scaling', result, path)


PLOTTERS = {'generate': plot_generate, 'http': plot_http, 'http-open-loop': plot_open_loop, 'teacher-vs-student': plot_teacher,
            'train': plot_train, 'soak': plot_soak, 'scaling': plot_scaling,
            'serve-scaling': plot_serve_scaling}


def plot_result(json_path):
    """Draw every chart the file's rows call for; returns the PNG paths (`<stem>.png`, or `<stem>-<kind>.png` if mixed)."""
    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    kinds = [k for k in PLOTTERS if _measured(result['results'], k)]
    paths = []
    for kind in kinds:
        path = json_path.with_suffix('.png') if len(kinds) == 1 else json_path.with_name(f'{json_path.stem}-{kind}.png')
        PLOTTERS[kind](result, _measured(result['results'], kind), path)
        paths.append(path)
    return paths
