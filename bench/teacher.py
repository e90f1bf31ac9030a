"""`sida bench teacher-vs-student`: the teacher under EDM's Heun sampler against the one-step student.

Both run on the same backend, device, batch and precision: eager (fp32, or bf16 autocast), or torch.compile with the
generator's options (weights cast to the precision; on CUDA, CUDA graphs: the student's one graph, and one graph of
the teacher's denoiser that every sampler step replays; the sampler's own arithmetic stays eager). The teacher's number
of network evaluations (NFE) is counted, not assumed: Heun with n steps costs 2n - 1 evaluations, so an
asked-for NFE is met with n = floor((NFE + 1) / 2) steps (an even request gets one evaluation less, which
understates, never flatters, the student's speed-up). Quality metrics recorded in the bundles'
`provenance.metrics` (e.g. fd_cifar, fd_cifar_teacher_nfe35) go into the rows beside the timings.
"""

import contextlib

import torch

from bench.flops import denoiser_flops, generator_flops, mfu, peak_for
from bench.record import machine, percentiles, time_runs, warm_up


class CountingDenoiser:
    """Calls a denoiser and counts the calls (edm_sample only calls it and reads sigma_min/sigma_max)."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0
        self.sigma_min = getattr(denoiser, 'sigma_min', 0)
        self.sigma_max = getattr(denoiser, 'sigma_max', float('inf'))

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.denoiser(*args, **kwargs)


def heun_steps(nfe):
    if nfe < 1:
        raise ValueError(f'NFE must be at least 1, got {nfe}')
    return max(1, (nfe + 1) // 2)


def bundle_metrics(path):
    """provenance.metrics of a bundle directory (numbers and strings only), or {}."""
    from models.bundle import read_config
    try:
        metrics = read_config(path).provenance.get('metrics') or {}
    except Exception:
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def _condition(kw, batch, device, text_tokens):
    """One-hot classes cycling through the labels (or all-padding text embeddings), as the denoiser takes them."""
    cond = {}
    if kw.get('label_dim'):
        labels = torch.arange(batch, device=device) % kw['label_dim']
        cond['class_labels'] = torch.nn.functional.one_hot(labels, kw['label_dim']).float()
    if kw.get('text_dim'):
        cond['text_embeds'] = torch.zeros(batch, 1 + text_tokens, kw['text_dim'], device=device)
    return cond


def _row(role, name, batch, times, device, precision, flops_per_image, peak, extra):
    images_per_s = batch * len(times) / sum(times)
    cuda = device.startswith('cuda')
    return {'kind': 'teacher-vs-student', 'role': role, 'backend': name, 'batch': batch, 'precision': precision, 'device': device,
            'runs': len(times), **percentiles(times), 'ms_per_image': 1000 * sum(times) / len(times) / batch,
            'images_per_s': images_per_s, 'flops_per_image': flops_per_image,
            'mfu': mfu(flops_per_image, images_per_s, peak),
            'peak_gpu_memory_mib': torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None, **extra}


def run_teacher_vs_student(teacher, student, batch=64, runs=10, nfes=(35, 18), precision=None, device=None, warmup=1,
                           max_seconds=60.0, peak_override=None, log=print, warmup_seconds=2.0, backend='eager'):
    from bench.presets import resolve_bundle
    from models.bundle import load_bundle
    from models.heun_sampler import edm_sample
    from models.seeds import noise_for_seeds
    from models.teacher_loader import load_teacher
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(device)
    precision = precision or ('bf16' if dev.type == 'cuda' else 'fp32')
    gpu = dev.type == 'cuda'
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    if backend not in ('eager', 'compile'):
        raise ValueError(f"backend must be 'eager' or 'compile', got {backend!r}")
    compiled = backend == 'compile'
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == 'bf16' and not compiled \
        else contextlib.nullcontext
    info = machine(gpu)
    peak, peak_source = peak_for(info, gpu, peak_override)

    student_dir = resolve_bundle(student, log=log)
    teacher_path = resolve_bundle(teacher, log=log) if str(teacher).startswith('preset:') else teacher
    s_bundle = load_bundle(student_dir, device=device)
    s_config = s_bundle.config
    t_denoiser, t_spec = load_teacher(teacher_path, device=device)
    t_kw = t_spec['network_kwargs']
    text_tokens = s_config.condition.get('max_tokens', 1) if s_config.condition['kind'] == 'text' else 1
    teacher_metrics, student_metrics = bundle_metrics(teacher_path), bundle_metrics(student_dir)

    # Student: the bundle's generator, one network evaluation per image.
    shape = (s_config.channels, s_config.resolution, s_config.resolution)
    s_inputs = {'noise': noise_for_seeds(range(batch), shape).to(dev)}
    if s_config.condition['kind'] == 'class':
        s_inputs['class_labels'] = (torch.arange(batch) % len(s_config.label_names)).to(dev)
    elif s_config.condition['kind'] == 'text':
        s_inputs['text_embeds'] = torch.zeros(batch, 1 + text_tokens, s_config.condition['dim'], device=dev)

    generator, denoiser, options = s_bundle.generator, t_denoiser, None
    if compiled:
        from export.compiled import compile_denoiser, compile_generator, default_options
        options = default_options(dev)
        generator = _CompiledCall(compile_generator(s_bundle.generator, precision, options, device), gpu, 0)
        denoiser = _CompiledCall(compile_denoiser(t_denoiser, precision, options, device), gpu)

    def student_call():
        with torch.inference_mode(), autocast():
            return generator(**s_inputs)

    rows = []
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    # compiled: the first call compiles, the second records the CUDA graph; a timed call must only replay it
    s_warm, _ = warm_up(student_call, max(warmup, 3 if compiled else 1), warmup_seconds, sync)
    s_times = time_runs(student_call, runs, sync, max_seconds)
    s_flops = _try(lambda: generator_flops(s_config, batch) / batch, log)
    student_row = _row('student', 'student-1nfe', batch, s_times, str(dev), precision, s_flops, peak,
                       {'nfe': 1, 'steps': 1, 'warmup_s': round(s_warm, 3), 'speedup': 1.0,
                        'metrics': {k: v for k, v in student_metrics.items() if 'teacher' not in k}})
    rows.append(student_row)
    log(f'student: {student_row["ms_per_image"]:.4f} ms/image at batch {batch}')

    # Teacher: EDM Heun sampling from the same kind of noise, NFE counted.
    t_shape = (t_kw['in_channels'], t_kw['img_resolution'], t_kw['img_resolution'])
    t_noise = noise_for_seeds(range(batch), t_shape).to(dev)
    cond = _condition(t_kw, batch, dev, text_tokens)
    per_eval_flops = _try(lambda: denoiser_flops(t_spec, batch, text_tokens) / batch, log)
    for nfe in nfes:
        steps = heun_steps(nfe)
        counted = CountingDenoiser(denoiser)

        def teacher_call():
            with torch.inference_mode(), autocast():
                return edm_sample(counted, t_noise, num_steps=steps, **cond)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        warm, warm_calls = warm_up(teacher_call, max(1, warmup), warmup_seconds, sync)
        measured_nfe = counted.calls // warm_calls
        times = time_runs(teacher_call, runs, sync, max_seconds)
        row = _row('teacher', f'teacher-heun-{measured_nfe}nfe', batch, times, str(dev), precision,
                   per_eval_flops * measured_nfe if per_eval_flops else None, peak,
                   {'nfe': measured_nfe, 'nfe_requested': nfe, 'steps': steps, 'warmup_s': round(warm, 3),
                    'metrics': {**{k.replace(f'_teacher_nfe{measured_nfe}', ''): v for k, v in student_metrics.items()
                                   if k.endswith(f'_teacher_nfe{measured_nfe}')}}})
        row['speedup'] = row['ms_per_image'] / student_row['ms_per_image']
        rows.append(row)
        log(f'teacher {measured_nfe} NFE ({steps} Heun steps): {row["ms_per_image"]:.4f} ms/image, student speed-up {row["speedup"]:.1f}x')

    settings = {'teacher': str(teacher), 'student': str(student), 'student_model': s_config.name,
                'teacher_architecture': t_spec['network'], 'student_architecture': s_config.architecture['network'],
                'teacher_resolution': t_kw['img_resolution'], 'student_resolution': s_config.resolution,
                'same_shape': t_shape == shape, 'batch': batch, 'runs': runs, 'warmup': warmup, 'warmup_seconds': warmup_seconds,
                'nfe_requested': list(nfes), 'precision': precision,
                'device': device, 'backend': backend, 'compile_options': str(options) if options else None,
                'sampler': 'EDM Heun (Karras et al. 2022, Algorithm 1, S_churn=0), models/heun_sampler.py edm_sample',
                'teacher_metrics': teacher_metrics, 'student_metrics': student_metrics,
                'peak_tflops_bf16_dense': peak, 'peak_source': peak_source,
                'timing': f'{backend} PyTorch, wall clock per batch fenced by torch.cuda.synchronize on GPU; warm-up '
                          'excluded (compile: the compiling calls are warm-up)'}
    return info, settings, rows


class _CompiledCall:
    """A compiled module called as the eager one is: on CUDA each call begins a new CUDA-graph step (the sampler uses
    each output before the next call), and `output` picks one output of a tuple (the generator's images)."""

    def __init__(self, module, gpu, output=None):
        self.module, self.gpu, self.output = module, gpu, output
        self.sigma_min = getattr(module, 'sigma_min', 0)
        self.sigma_max = getattr(module, 'sigma_max', float('inf'))

    def __call__(self, *args, **kwargs):
        if self.gpu:
            torch.compiler.cudagraph_mark_step_begin()
        out = self.module(*args, **kwargs)
        return out if self.output is None else out[self.output]


def _try(fn, log):
    try:
        return fn()
    except Exception as e:
        log(f'FLOP count failed: {type(e).__name__}: {e}')
        return None
