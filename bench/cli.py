"""`sida bench`: generate | teacher-vs-student | http | soak | train | scaling | fid-weights | fid-rounding | report.

Each subcommand imports its own code only when it runs, so `sida bench generate` works on machines that
have torch but no server stack (no FastAPI, uvicorn, pydantic-settings, prometheus_client).
"""

import json
from urllib.parse import urlparse

import click

from serve.runtimes import BACKEND_HELP, backend_callback
from sida.cli_options import CPU_COMPILE_DEFAULT, CTX, CUDA_COMPILE_DEFAULT, device_option, is_loopback, resolve_device

OUT = click.option('--out', default='bench/results', type=click.Path(file_okay=False),
                   help='Results root: files go to OUT/<device-slug>/<date>-<name>.json (+ .png).')
NAME = click.option('--name', default=None, show_default='derived from the command', help='Run name in the file name.')
PEAK = click.option('--peak-tflops', type=float, default=None, show_default='looked up by GPU name; none on CPU',
                    help='Peak dense bf16 TFLOP/s for MFU.')
DEVICE = device_option()
PLOT = click.option('--plot/--no-plot', default=True, help='Write the PNG charts beside the JSON.')


def int_list(ctx, param, value):
    if value is None:
        return None
    try:
        values = [int(v) for v in str(value).split(',') if v.strip()]
    except ValueError:
        raise click.BadParameter(f'{value!r}: expected comma-separated integers like 1,8,64') from None
    if not values or min(values) < 1:
        raise click.BadParameter(f'{value!r}: expected positive integers')
    return values


def rate_list(ctx, param, value):
    if value is None:
        return []
    try:
        values = [float(v) for v in str(value).split(',') if v.strip()]
    except ValueError:
        raise click.BadParameter(f'{value!r}: expected comma-separated requests per second like 10,50,200') from None
    if not values or not all(0 < v < float('inf') for v in values):
        raise click.BadParameter(f'{value!r}: expected positive rates')
    return values


def name_list(ctx, param, value):
    values = [v.strip() for v in str(value).split(',') if v.strip()]
    if not values:
        raise click.BadParameter('expected a comma-separated list')
    return values


def compile_variants(ctx, param, value):
    if value is None:
        return None
    from export.compiled import CompileOptions
    try:
        return [CompileOptions.parse(v) for v in name_list(ctx, param, value)]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _finish(out, info, name, settings, rows, plot):
    from bench.record import safe_name, write_result
    path = write_result(out, info, safe_name(name), settings, rows, plot=plot)
    click.echo(f'wrote {path}' + (f' and {len(list(path.parent.glob(path.stem + "*.png")))} chart(s)' if plot else ''), err=True)
    click.echo('refresh the table with: sida bench report', err=True)
    return path


@click.group(context_settings=CTX)
def bench():
    """Benchmark generation, serving and training; results (JSON + PNG) go to bench/results/<device>/."""


@bench.command(context_settings=CTX)
@click.option('--bundle', required=True, help='Bundle directory, or preset:NAME for random weights of a reference network '
                                              '(preset:ddpmpp-cifar10, preset:ncsnpp-cifar10, preset:adm-imagenet64, preset:demo).')
@click.option('--backends', default='torch-fp32,torch-bf16,compile-bf16,onnxruntime,tensorrt,triton', callback=name_list,
              help='Comma-separated backends, named as for `sida serve --backend` (no auto): ' + BACKEND_HELP.split(';')[0] + '.')
@click.option('--batch', 'batches', default='1,8,64,256', callback=int_list, help='Batch sizes.')
@click.option('--runs', default=20, type=click.IntRange(1), help='Measured calls per configuration.')
@click.option('--warmup', default=3, type=click.IntRange(0), help='Unmeasured calls per configuration first (compile needs >= 3).')
@click.option('--warmup-seconds', default=1.0, type=click.FloatRange(0), help='...and keep warming up until this long has passed.')
@click.option('--max-seconds', default=30.0, type=float, help='Stop a configuration\'s measured runs after this long (>= 3 runs).')
@DEVICE
@click.option('--io', type=click.Choice(['device', 'host']), default='device',
              help='PyTorch backends: inputs on the device and outputs left there, or CPU in / host bytes out like the server.')
@click.option('--compile-mode', default=None,
              show_default=f'{CUDA_COMPILE_DEFAULT} on CUDA, {CPU_COMPILE_DEFAULT} on CPU',
              help='torch.compile mode.')
@click.option('--compile-variants', default=None, callback=compile_variants,
              help='Measure every compile backend once per variant, MODE[+switch...] (switches: '
                   'freezing, channels-last, grouped-norm, fused-affines, combo-kernels, pointwise-cat, channels-last-cat, '
                   'fused-norm, coordinate-descent, folded-norm, folded-torch-norm, split-skip, planar-qkv, fused-qkv, fast-math, '
                   'cudnn-benchmark, '
                   'whole-graph; docs/export.md), '
                   'comma-separated, e.g. '
                   'reduce-overhead,reduce-overhead+channels-last+fused-affines (each row also carries the parity gate).')
@click.option('--profile', 'profile_dir', default=None, type=click.Path(file_okay=False),
              help='Also profile each configuration (torch.profiler): key_averages table and gzipped Chrome trace go here.')
@click.option('--export/--no-export', 'export_missing', default=True,
              help='Export missing ONNX / TensorRT artefacts into the bundle first (timed as set-up).')
@click.option('--triton-url', default=None, show_default='a local PyTriton', help='Measure an external Triton serving this bundle.')
@click.option('--components', is_flag=True,
              help='Latent generators: also time the denoiser (UNet) and the VAE decoder apart, each compiled like the '
                   'generator (the first --compile-variants, else the default), with FLOPs and MFU of each.')
@PEAK
@OUT
@NAME
@PLOT
def generate(bundle, backends, batches, runs, warmup, warmup_seconds, max_seconds, device, io, compile_mode, compile_variants,
             profile_dir, export_missing, triton_url, components, peak_tflops, out, name, plot):
    """Latency percentiles, images/s, peak GPU memory and MFU per backend and batch size."""
    device = resolve_device(device)
    from bench.generate import parse_backend, run_generate
    for b in backends:
        try:
            parse_backend(b)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint='--backends') from None
    def partial_result(info, settings, rows):     # the same file, marked incomplete, until the run's end replaces it
        from bench.record import safe_name, write_result
        write_result(out, info, safe_name(name or f'generate-{settings["model"]}'), {**settings, 'incomplete': True}, rows,
                     plot=False)

    if components:
        from bench.presets import resolve_bundle
        from models.bundle import validate_bundle
        if not validate_bundle(resolve_bundle(bundle, log=lambda m: click.echo(m, err=True))).latent:
            raise click.BadParameter(f'{bundle} has no VAE decoder: --components is for latent generators',
                                     param_hint='--components')
    try:
        info, settings, rows = run_generate(bundle, backends, batches, runs, warmup, max_seconds, device, io, compile_mode,
                                            export_missing, triton_url, peak_tflops, log=lambda m: click.echo(m, err=True),
                                            warmup_seconds=warmup_seconds, compile_variants=compile_variants,
                                            profile_dir=profile_dir, on_row=partial_result)
        if components:
            from bench.components import run_components
            from export.compiled import default_options
            from models.bundle import load_bundle
            options = (compile_variants or [default_options(device, compile_mode)])[0]
            precision = 'bf16' if str(settings['device']).startswith('cuda') else 'fp32'
            rows += run_components(load_bundle(settings['bundle_dir']), batches, precision, options, device, runs, warmup,
                                   max_seconds, settings['peak_tflops_bf16_dense'], log=lambda m: click.echo(m, err=True))
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    _finish(out, info, name or f'generate-{settings["model"]}', settings, rows, plot)


@bench.command('teacher-vs-student', context_settings=CTX)
@click.option('--teacher', required=True, help='Teacher: EDM/SiD network pickle, sida bundle, or preset:NAME.')
@click.option('--student', required=True, help='One-step student bundle (or preset:NAME).')
@click.option('--batch', default=64, type=click.IntRange(1), help='Images per batch.')
@click.option('--runs', default=10, type=click.IntRange(1), help='Measured batches per model.')
@click.option('--nfe', 'nfes', default='35,18', callback=int_list,
              help='Teacher network evaluations (Heun: 2*steps-1, so even values get one less).')
@click.option('--precision', type=click.Choice(['fp32', 'bf16']), default=None, show_default='bf16 autocast on CUDA, fp32 on CPU',
              help='Precision of both models.')
@click.option('--backend', 'runtime', type=click.Choice(['eager', 'compile']), default='eager', show_default=True,
              help='Both models eager, or both torch.compiled with the generator\'s default options (CUDA graphs on '
                   'CUDA: the teacher\'s denoiser is one graph that every sampler step replays).')
@click.option('--warmup', default=1, type=click.IntRange(0), help='Unmeasured batches per model first.')
@click.option('--warmup-seconds', default=2.0, type=click.FloatRange(0), help='...and keep warming up until this long has passed.')
@click.option('--max-seconds', default=60.0, type=float, help='Stop a model\'s measured runs after this long (>= 3 runs).')
@DEVICE
@PEAK
@OUT
@NAME
@PLOT
def teacher_vs_student(teacher, student, batch, runs, nfes, precision, runtime, warmup, warmup_seconds, max_seconds, device,
                       peak_tflops, out, name, plot):
    """Teacher (EDM Heun, several NFE) vs one-step student: time per image, speed-up, recorded quality."""
    device = resolve_device(device)
    from bench.teacher import run_teacher_vs_student
    try:
        info, settings, rows = run_teacher_vs_student(teacher, student, batch, runs, nfes, precision, device, warmup, max_seconds,
                                                      peak_tflops, log=lambda m: click.echo(m, err=True), warmup_seconds=warmup_seconds,
                                                      backend=runtime)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    _finish(out, info, name or f'teacher-vs-student-{settings["student_model"]}', settings, rows, plot)


@bench.command(context_settings=CTX)
@click.option('--url', required=True, help='A running `sida serve`, e.g. http://127.0.0.1:8000 (loopback only).')
@click.option('--concurrency', 'concurrencies', default=None, callback=int_list, show_default='1,8,32,128, none if only --rate is given',
              help='Closed loop: concurrent clients, each sending its next request when the last is answered; one level at a time.')
@click.option('--rate', 'rates', default=None, callback=rate_list,
              help='Open loop: requests per second, one rate at a time after the concurrency levels (e.g. 10,50,200). Poisson '
                   'arrivals (seeded exponential gaps); each request goes out at its time whether or not earlier ones were '
                   'answered, so overload shows as latency and 429s, not as a lower offered rate. Reports the rate actually '
                   'sent, throughput, latency from the scheduled send, 429 times and the server\'s batch sizes (/metrics).')
@click.option('--arrival-seed', default=0, type=int, help='Seed of the open-loop arrival times (rate i uses seed + i).')
@click.option('--deadline-ms', default=None, type=click.FloatRange(0, min_open=True),
              help='Send X-Request-Deadline-Ms with every request: the server answers 429 at once when it cannot finish in time.')
@click.option('--duration', default=10.0, type=click.FloatRange(0.1, 3600), help='Seconds per concurrency level and per rate.')
@click.option('--max-requests', default=20000, type=click.IntRange(1), help='Request cap per level and per rate.')
@click.option('--model', default=None, show_default='the server\'s first', help='Model id.')
@click.option('--label', default=None, help='A free label recorded with the results, e.g. the server\'s layout '
              '(workers-per-gpu); `sida bench serve-scaling` compares runs with the same label.')
@click.option('--n', default=1, type=click.IntRange(1), help='Images per request.')
@click.option('--prompt', default='a photo of a cat', help='Prompt for text models.')
@click.option('--format', 'fmt', default='png', type=click.Choice(['png', 'jpeg', 'webp', 'npy']),
              help='Image format asked for (npy: the raw uint8 pixels, no encoding).')
@click.option('--response', default='b64', type=click.Choice(['b64', 'binary']),
              help='b64: JSON with base64 images; binary: the bytes (a zip of several, or one .npy array for --format npy).')
@click.option('--timeout', default=60.0, type=float, help='Per-request timeout, seconds.')
@click.option('--warmup-requests', default=4, type=click.IntRange(0), help='Sequential requests before measuring.')
@click.option('--client-processes', default=1, type=click.IntRange(1),
              help='Split the load across this many client processes (a level\'s clients evenly, at most one process per client; '
                   'a rate as independent Poisson streams at rate/P), started together, results merged. One Python process '
                   'sends at most a few hundred requests/s: use several (up to the cores left beside the server) above that.')
@click.option('--api-key', default=None, envvar='SIDA_BENCH_API_KEY', help='Bearer key, if the server wants one.')
@click.option('--allow-remote', is_flag=True, help='Allow a non-loopback URL (only a server you own).')
@OUT
@NAME
@PLOT
def http(url, concurrencies, rates, arrival_seed, deadline_ms, duration, max_requests, model, label, n, prompt, fmt, response,
         timeout, warmup_requests, client_processes, api_key, allow_remote, out, name, plot):
    """End-to-end HTTP load on `sida serve`, closed loop (--concurrency) and/or open loop (--rate): throughput, latency
    percentiles, errors by status."""
    from bench.loadtest import RemoteRefused, run_http
    from bench.record import machine
    if concurrencies is None:
        concurrencies = [] if rates else [1, 8, 32, 128]
    try:
        info_server, settings, rows = run_http(url, concurrencies, duration, model, n, max_requests, timeout, prompt, allow_remote,
                                               warmup_requests, api_key, log=lambda m: click.echo(m, err=True), rates=rates,
                                               arrival_seed=arrival_seed, deadline_ms=deadline_ms, fmt=fmt, response=response,
                                               client_processes=client_processes)
    except RemoteRefused as e:
        raise click.UsageError(str(e)) from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:      # server down, refused connection, bad answer: one line
        raise click.ClickException(f'{url}: {type(e).__name__}: {e}') from None
    if label:
        settings['label'] = label
    _finish(out, machine(_server_on_gpu(settings)), name or f'http-{settings["model"]}', settings, rows, plot)


def _server_on_gpu(settings):
    """Whether the measured server ran on a GPU this machine has (the results go under that device's folder). A
    loopback Triton (`sida serve --triton`) runs its models here: on the GPU when there is one."""
    device = str(settings.get('server_device') or '')
    local_triton = device.startswith('triton:') and is_loopback(urlparse(device.removeprefix('triton:')).hostname or '')
    if not (device.startswith('cuda') or local_triton):
        return False
    import torch
    return torch.cuda.is_available()


@bench.command(context_settings=CTX)
@click.option('--bundle', required=True, type=click.Path(exists=True, file_okay=False), help='Bundle the soaked server serves.')
@click.option('--backend', default='torch', callback=backend_callback, help=BACKEND_HELP)
@click.option('--minutes', default=10.0, type=click.FloatRange(0.1, 600), help='How long the load runs.')
@click.option('--concurrency', default=8, type=click.IntRange(1), help='Closed-loop clients (moderate load).')
@click.option('--n', default=1, type=click.IntRange(1), help='Images per request.')
@click.option('--sample-every', default=5.0, type=click.FloatRange(0.5), help='Seconds between memory samples.')
@click.option('--warmup-seconds', default=60.0, type=click.FloatRange(0), help='Growth is measured after this long.')
@click.option('--max-growth', default=0.05, type=click.FloatRange(0), help='Allowed memory growth after warm-up (0.05: 5%).')
@OUT
@NAME
@PLOT
def soak(bundle, backend, minutes, concurrency, n, sample_every, warmup_seconds, max_growth, out, name, plot):
    """Start `sida serve` on BUNDLE, hold moderate load for --minutes, sample its RSS (and GPU memory); pass if memory
    grows at most --max-growth after the warm-up."""
    import tempfile
    from pathlib import Path

    from bench.record import machine
    from bench.soak import run_soak
    log_path = Path(tempfile.mkdtemp(prefix='sida-soak-')) / 'server.log'      # named in the error if the server dies
    try:
        info, settings, rows = run_soak(bundle, backend, minutes, concurrency, sample_every, n, warmup_seconds, max_growth,
                                        log_path=log_path, log=lambda m: click.echo(m, err=True))
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    _finish(out, machine(_server_on_gpu(settings)), name or f'soak-{settings["model"]}', settings, rows, plot)
    v = settings['verdict']
    growth = ', '.join(f'{k.removesuffix("_mib_growth")} {100 * g:+.1f}%' for k, g in v.items() if k.endswith('_growth'))
    if not v['passed']:
        raise click.ClickException(f'memory grew after warm-up ({growth or "too few samples"}); allowed {100 * max_growth:g}%')
    click.echo(f'passed: memory after warm-up {growth} (allowed {100 * max_growth:g}%)', err=True)


@bench.command(context_settings=CTX)
@click.option('--variants', default='fp32,tf32,bf16,bf16-compile,bf16-compile-cg,sida-bf16-compile-cg',
              callback=name_list, help='fp32, tf32, bf16, bf16-cl, bf16-compile, bf16-compile-cl, bf16-compile-cg (CUDA graphs), '
              'bf16-compile-autotune, sida-fp32, sida-bf16, sida-bf16-compile, sida-bf16-compile-cg; on sd15-unet / tiny-sd: '
              'lsg-fp32, lsg-bf16, lsg-bf16-compile (SiD-LSG).')
@click.option('--network', type=click.Choice(['ddpmpp-cifar10', 'demo', 'sd15-unet', 'tiny-sd']), default='ddpmpp-cifar10',
              help='Network (random weights).')
@click.option('--batch', default=128, type=click.IntRange(1), help='Per-device batch.')
@click.option('--iters', default=20, type=click.IntRange(1), help='Measured iterations per variant.')
@click.option('--warmup', default=3, type=click.IntRange(0), help='Unmeasured iterations first.')
@DEVICE
@PEAK
@OUT
@NAME
@PLOT
def train(variants, network, batch, iters, warmup, device, peak_tflops, out, name, plot):
    """Distillation throughput: generator images/s, step latency, peak memory and MFU per variant."""
    device = resolve_device(device)
    from bench.train_throughput import run_train
    try:
        info, settings, rows = run_train(variants, network, batch, iters, warmup, device, peak_tflops,
                                         log=lambda m: click.echo(m, err=True))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    _finish(out, info, name or f'train-throughput-{network}', settings, rows, plot)


@bench.command(context_settings=CTX)
@click.argument('runs', nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option('--skip', default=2, type=click.IntRange(0), help='Logged windows left out at the start of each run '
              '(compiling, CUDA-graph recording).')
@click.option('--compare', default=None, help='Two run folders, comma-separated (same global batch and seed, N GPUs and '
              'one): their logged losses window by window, as the largest and median relative difference.')
@OUT
@NAME
@PLOT
def scaling(runs, skip, compare, out, name, plot):
    """Distillation throughput against GPUs from RUNS (`sida train distill` folders, under torchrun for N > 1): steady
    images/s, per GPU, scaling efficiency against the 1-GPU run, peak memory (bench/scale_train.sh makes the runs)."""
    import torch

    from bench.record import machine
    from bench.scaling import loss_agreement, scaling_rows
    try:
        rows, skipped = scaling_rows(runs, skip, log=lambda m: click.echo(m, err=True))
        agreement = loss_agreement(*compare.split(',')) if compare else None
    except (ValueError, TypeError) as e:
        raise click.ClickException(str(e)) from None
    if not rows:
        raise click.ClickException('no run could be read: ' + '; '.join(skipped))
    for r in rows:
        eff = f', {100 * r["efficiency"]:.1f}% of linear' if r['efficiency'] is not None else ''
        ddp = ' (DDP)' if r['ddp'] else ''
        click.echo(f'{r["method"]} {r["gpus"]} GPU(s){ddp} x {r["per_gpu_batch"]}: {r["images_per_s"]:.1f} img/s{eff}', err=True)
    if agreement:
        click.echo(json.dumps(agreement, indent=2), err=True)
    settings = {'runs': list(runs), 'skip': skip, 'skipped_runs': skipped, 'loss_agreement': agreement,
                'rate': 'median images/s of the logged windows after the first --skip'}
    _finish(out, machine(torch.cuda.is_available()), name or 'scaling', settings, rows, plot)


@bench.command('serve-scaling', context_settings=CTX)
@click.argument('results', nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@OUT
@NAME
@PLOT
def serve_scaling(results, out, name, plot):
    """Serving throughput against GPUs from RESULTS (`sida bench http` JSON files of one server on 1, 2, ... GPUs, closed
    and open loop; bench/scale_serve.sh makes them): saturation images/s, p99 at 80% of it, speed-up over one GPU against
    the targets (>= 1.8x at 2 GPUs, >= 6.5x at 8)."""
    import torch

    from bench.record import machine
    from bench.serve_scaling import LOAD, serve_scaling_rows
    try:
        rows = serve_scaling_rows(results)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise click.ClickException(str(e)) from None
    if not rows:
        raise click.ClickException('no closed-loop level answered in these results: nothing to compare')
    for r in rows:
        speedup = f', {r["speedup"]:.2f}x one GPU' if r['speedup'] else ''
        p99 = f', p99 {r["load_p99_ms"]:.1f} ms at {100 * r["load_fraction"]:.0f}% load' if r.get('load_p99_ms') else ''
        click.echo(f'{r["model"]} {r["layout"]} {r["gpus"]} GPU(s): {r["images_per_s"]:.1f} img/s{speedup}{p99}', err=True)
    settings = {'results': list(results), 'load_fraction': LOAD,
                'gpus': 'the devices that answered, from each result\'s /metrics scrape (server_devices)'}
    _finish(out, machine(torch.cuda.is_available()), name or 'serve-scaling', settings, rows, plot)


@bench.command('fid-weights', context_settings=CTX)
@click.argument('out_path', metavar='OUT.pt', type=click.Path(dir_okay=False))
@click.option('--dtype', type=click.Choice(['fp16', 'bf16', 'int8']), default='fp16',
              help='What the weight tensors are rounded to: fp16 or bf16 (44 MB; fp16 keeps 3 more mantissa bits), or int8 '
                   'per output channel (22 MB, 18.6 MB gzipped; a larger FID change). See docs/training.md for the FID cost.')
@click.option('--source', type=click.Path(exists=True, dir_okay=False), default=None, show_default='the [fid] extra\'s default_1.pt',
              help='The full-precision Inception TorchScript to round.')
def fid_weights(out_path, dtype, source):
    """Write the TF-FID Inception weights rounded to fp16/bf16 (44 MB) or int8 (22 MB), to carry where the [fid] extra
    is not installed."""
    from bench.fid_weights import gzip_size, write_rounded
    from train.metrics import FIDUnavailable
    try:
        path, size, meta = write_rounded(out_path, dtype, source)
    except FIDUnavailable as e:
        raise click.ClickException(f'{e}; or give --source PATH') from None
    click.echo(f'wrote {path}: {size / 1e6:.1f} MB ({gzip_size(path) / 1e6:.1f} MB gzipped), '
               f'{meta["rounded_parameters"]:,} weights in {dtype} '
               f'(use it with `sida train evaluate --fid-weights {path}`)')


@bench.command('fid-rounding', context_settings=CTX)
@click.option('--data', required=True, type=click.Path(exists=True), help='CIFAR-10-style data with train/ and test/ (the JPEG tarball).')
@click.option('--images', type=click.IntRange(2), default=300, help='Images per set (test, train, train+noise); CPU: ~0.15-0.3 s each.')
@click.option('--dtypes', default='fp16,bf16,int8', callback=name_list,
              help='Rounded copies to compare with the full weights (fp16, bf16, int8).')
@click.option('--noise', type=click.FloatRange(0), default=16.0, help='Grey levels of Gaussian noise in the noisy set.')
@OUT
@NAME
def fid_rounding(data, images, dtypes, noise, out, name):
    """FID with full vs rounded Inception weights on the same real images: the deviation rounding costs."""
    import torch

    from bench.fid_weights import measure_rounding
    from bench.record import machine
    from train.metrics import ROUNDED_DTYPES, FIDUnavailable
    bad = [d for d in dtypes if d not in ROUNDED_DTYPES]
    if bad:
        raise click.BadParameter(f'{bad[0]!r}: choose from {", ".join(ROUNDED_DTYPES)}', param_hint='--dtypes')
    info = machine(gpu=False)
    try:
        settings, rows = measure_rounding(data, images, dtypes, noise, log=lambda m: click.echo(m, err=True))
    except FIDUnavailable as e:
        raise click.ClickException(str(e)) from None
    settings['torch_threads'] = torch.get_num_threads()
    _finish(out, info, name or f'fid-rounding-{images}', settings, rows, plot=False)


@bench.command(context_settings=CTX)
@click.option('--results', default='bench/results', type=click.Path(file_okay=False), help='Where the result JSON files are.')
@click.option('--readme', default='bench/README.md', type=click.Path(dir_okay=False), help='The README to rewrite.')
def report(results, readme):
    """Rewrite bench/README.md (tables, charts, issue targets) from every result JSON found."""
    from bench.report import write_report
    click.echo(f'wrote {write_report(results, readme)}')
