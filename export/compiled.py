"""torch.compile as an export target: no model file, but the same parity gate, a manifest entry, and the compiled
code itself as portable cache artifacts (export/compile_cache.py) that the compile backend loads instead of compiling.

On CUDA: bf16, static shapes, CUDA graphs, warmed up once per batch bucket, so a server pads each batch up to the
nearest bucket and never recompiles under load. Export, serve and bench compile the one same graph
(compile_generator, with the float output on), so the cache entries one writes are hits for the others.
"""

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from export.compile_cache import CompileCache, artifacts_file, cache_key, exported_entry, save_artifacts
from export.manifest import record_export, runtime_versions
from export.onnx_export import PRECISIONS, ExportError
from export.parity import gate, run_parity
from models.bundle import load_bundle
from models.layers import GroupNorm, UNetBlock, fold_torch_group_norms, fuse_affines
from sida.cli_options import COMPILE_MODES

# What `sida export compile` compiles by default: every bucket of a server whose --max-batch is 32, 64, 128 or 256.
DEFAULT_BUCKETS = (1, 8, 32, 64, 128, 256)
SWITCHES = {'freezing': 'freezing', 'channels-last': 'channels_last', 'grouped-norm': 'grouped_norm',
            'fused-affines': 'fused_affines', 'combo-kernels': 'combo_kernels', 'pointwise-cat': 'pointwise_cat',
            'channels-last-cat': 'channels_last_cat', 'fused-norm': 'fused_norm', 'coordinate-descent': 'coordinate_descent',
            'folded-norm': 'folded_norm', 'folded-torch-norm': 'folded_torch_norm', 'split-skip': 'split_skip',
            'planar-qkv': 'planar_qkv', 'fused-qkv': 'fused_qkv', 'fast-math': 'fast_math',
            'cudnn-benchmark': 'cudnn_benchmark',
            'whole-graph': 'whole_graph'}


GRAPH_MODES = ('reduce-overhead', 'max-autotune')      # the modes that capture CUDA graphs themselves
# folded-norm, split-skip and planar-qkv act from this batch on: at batch 1 split-skip + planar-qkv took 1.53 ms
# against 1.41 without (H100, 2026-12-07), and folded-norm adds a small kernel per norm; from 64 on the three gained.
LARGE_BATCH = 32
# folded-torch-norm from this many values a call (a 32x32x256 activation at batch 16; SD-1.5's UNet at batch 16, its
# VAE decoder's norms above 64x64 at batch 1): smaller calls keep torch's kernels.
FOLD_MIN_ELEMENTS = 2 ** 22


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """What changes the compiled code besides model, precision and shapes; written MODE[+switch...], the switches
    in SWITCHES' order. Each one is a speed candidate measured on and off (bench/gpu_session.sh speed)."""

    mode: str = 'default'
    freezing: bool = False          # weights become constants that inductor folds into the graph (inference only)
    channels_last: bool = False     # NHWC weights, and inductor keeps every convolution NHWC (its heuristic may not)
    grouped_norm: bool = False      # GroupNorm traced as a grouped view of its input, not as group_norm (slower on
                                    # the H200, 2026-12-06: it moves the concats' strided reads into its statistics)
    fused_affines: bool = False     # one matmul for every block's projection of the shared embedding (FusedAffines)
    combo_kernels: bool = False     # independent small kernels launched as one (fewer launches at batch 1)
    pointwise_cat: bool = False     # the decoder's skip concatenations computed inside their consumers, not copied
                                    # into a buffer whose layout inductor fixes before it knows its inputs' (NCHW)
    channels_last_cat: bool = False  # those concatenations laid out channels-last (models.layers.concat_channels)
    fused_norm: bool = False        # GroupNorm + SiLU as one Triton kernel, one HBM read (models/fused_norm.py; CUDA,
                                    # where the batch fills the GPU)
    coordinate_descent: bool = False  # inductor tunes each Triton kernel's block sizes by timing neighbours at its
                                      # first launch: for the memory-bound GroupNorm/SiLU/add kernels (half of batch
                                      # 256's time); tuned while other processes share the GPU, the picks are noisier
    folded_norm: bool = False       # GroupNorm from per-channel sums (coalesced NHWC reads), applied as one multiply-
                                    # add per element with the block's embedding add or scale/shift folded in
                                    # (models.layers.folded_affine); from LARGE_BATCH on, as the next two
    folded_torch_norm: bool = False  # the same for torch.nn.GroupNorm (diffusers' SD UNet and VAE decoder), for calls
                                     # of FOLD_MIN_ELEMENTS values or more (models.layers.FoldedTorchGroupNorm)
    split_skip: bool = False        # decoder blocks take (x, skip) apart: the norm reads both (the concat becomes
                                    # pointwise, inside its kernels) and the 1x1 skip convolves each with its slice of
                                    # the weight; no concat is written (H100 profile, batch 256: about 1 ms a forward
                                    # of copies into concat buffers)
    planar_qkv: bool = False        # the qkv projection's channels reordered ({q,k,v}, head, channel), so q, k and v
                                    # reach the attention kernel as views: no copies (0.8 ms a forward at batch 256)
    fused_qkv: bool = False         # diffusers attention (SD's UNet and VAE decoder): q, k and v as one projection, k
                                    # and v as one for cross-attention (their fuse_qkv_projections): one GEMM instead of
                                    # three on the 4,096 tokens of SD-1.5's 64x64 blocks; sida UNets: nothing to do
    fast_math: bool = False         # inductor's use_fast_math: exp as the approximate flush-to-zero instruction in the
                                    # Triton kernels (the SiLU of every GroupNorm + SiLU kernel; those ran at 1.7-1.9
                                    # TB/s, partly bound by their arithmetic, H100 batch-256 profile)
    cudnn_benchmark: bool = False   # cuDNN times its convolution algorithms per shape before whole-graph captures them
                                    # (instead of its heuristics' pick; convolutions are the other half at batch 256)
    whole_graph: bool = False       # one CUDA graph per bucket around the whole generator, captured by sida (WholeGraph)

    def __post_init__(self):
        if self.mode not in COMPILE_MODES:
            raise ValueError(f'compile mode must be one of {", ".join(COMPILE_MODES)}, got {self.mode!r}')
        if self.whole_graph and self.mode in GRAPH_MODES:
            raise ValueError(f'{self.mode}+whole-graph: whole-graph captures its own CUDA graph; use it with default or '
                             'max-autotune-no-cudagraphs')
        if self.cudnn_benchmark and not self.whole_graph:
            raise ValueError('cudnn-benchmark times the algorithms that whole-graph captures: use it with whole-graph')

    def adapted(self, mode, device):
        """These switches under `mode` on `device` (an export's options, served with --compile-mode): whole-graph is
        dropped where it cannot be, beside a mode's own CUDA graphs or off CUDA, and fused-norm off CUDA."""
        cuda = torch.device(device).type == 'cuda'
        whole = self.whole_graph and mode not in GRAPH_MODES and cuda
        return dataclasses.replace(self, mode=mode, whole_graph=whole, cudnn_benchmark=self.cudnn_benchmark and whole,
                                   fused_norm=self.fused_norm and cuda)

    @classmethod
    def parse(cls, text):
        """'max-autotune+freezing+channels-last' -> CompileOptions; ValueError names what is wrong."""
        mode, *switches = str(text).strip().split('+')
        unknown = [s for s in switches if s not in SWITCHES]
        if unknown:
            raise ValueError(f'{text!r}: unknown switch {unknown[0]!r}; use MODE[+{"][+".join(SWITCHES)}]')
        return cls(mode, **{SWITCHES[s]: True for s in switches})

    def __str__(self):
        return '+'.join([self.mode, *(s for s, field in SWITCHES.items() if getattr(self, field))])

    def as_dict(self):
        return {'spec': str(self), **dataclasses.asdict(self)}

    def inductor_options(self):
        """The mode's own options plus the switches (torch.compile takes a mode or options, not both)."""
        from torch._inductor import list_mode_options
        options = dict(list_mode_options(self.mode))
        if self.freezing:
            options['freezing'] = True
        if self.channels_last:
            options['force_layout_optimization'] = True
        if self.combo_kernels:
            options['combo_kernels'] = True
        if self.pointwise_cat:
            options['force_pointwise_cat'] = True
        if self.coordinate_descent:
            options['coordinate_descent_tuning'] = True
        if self.fast_math:
            from torch._inductor import config
            if not hasattr(config, 'use_fast_math'):
                raise ValueError(f'fast-math: this torch ({torch.__version__}) has no inductor use_fast_math option')
            options['use_fast_math'] = True
        return options

    def cuda_graphs(self):
        return self.whole_graph or bool(self.inductor_options().get('triton.cudagraphs'))


def batch_buckets(max_batch):
    """The batch sizes a server compiles for: 1, each power of 8 below max_batch, and max_batch itself. A full batch
    runs unpadded (the throughput case); a smaller one pads at most 8x, where a batch costs little (latency case)."""
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(size)
        size *= 8
    return tuple(buckets + [max_batch])


def default_options(device, mode=None):
    """On CUDA: mode default + channels-last + fused-affines + channels-last-cat + folded-norm + split-skip + planar-qkv
    + whole-graph, the fastest measured without tuning (ddpmpp-cifar10 bf16, H100, 2026-12-07, same run, through the
    parity gate: batch 256 10,269 img/s, 44.0% of bf16 peak, against 8,887 without the last three switches; batch 64
    9,026 against 8,170; below batch 32 the three model switches are off, though split-skip's inductor option
    (force_pointwise_cat) applies to every bucket, so batch 1 and 8 under this default are not measured yet;
    bench/results/nvidia-h100-80gb-hbm3/2026-12-07-speed-folded-norm/). max-autotune's 2026-12-02 H200 figures were
    no better and cost minutes of tuning per start. On CPU: default + fused-affines. `mode` (--compile-mode) replaces
    the mode only; a mode with CUDA graphs of its own drops whole-graph."""
    from sida.cli_options import CPU_COMPILE_DEFAULT, CUDA_COMPILE_DEFAULT
    if torch.device(device).type != 'cuda':
        cpu = CompileOptions.parse(CPU_COMPILE_DEFAULT)
        return dataclasses.replace(cpu, mode=mode or cpu.mode)
    best = CompileOptions.parse(CUDA_COMPILE_DEFAULT)
    return best.adapted(mode or best.mode, device)


def compile_generator(generator, precision='bf16', options=None, device='cuda'):
    """Cast the UNet body, compile the whole generator (static shapes, one graph per bucket).

    The compiled generator returns (images, images_float): the parity gate needs the floats, and one graph for
    export, serve and bench keeps their cache entries interchangeable (the float output costs a few KB per image)."""
    options = options or default_options(device)
    _check_device_switches(options, device)
    generator = prepare_generator(generator, precision, options, device)
    generator.return_float = True
    compiled = torch.compile(generator, options=inductor_options_for(generator, options), fullgraph=True, dynamic=False)
    return WholeGraph(compiled, options.cudnn_benchmark) if options.whole_graph else compiled


def _check_device_switches(options, device):
    if options.whole_graph and torch.device(device).type != 'cuda':
        raise ValueError(f'whole-graph captures a CUDA graph: it needs a CUDA device, not {device}')
    if options.fused_norm and torch.device(device).type != 'cuda':
        raise ValueError(f'fused-norm runs a Triton GPU kernel: it needs a CUDA device, not {device}')


class WholeGraph:
    """The compiled generator inside one CUDA graph per input shape, captured here with torch.cuda.CUDAGraph. A call
    copies its inputs into the graph's static buffers and replays it: one launch, and none of the per-call Python of
    reduce-overhead's CUDA-graph trees and dynamo's guards, which is most of what batch 1 costs beyond its kernels
    (H100 profile, 2026-12-07: 1.2 ms of kernels in 1.6-1.8 ms). The graphs share one memory pool (as reduce-overhead's
    do), so the outputs are valid until the next call of any shape: copy them out first (the backend's .cpu() does).
    Everything runs on the inputs' device whatever the thread's current one is (a replica on cuda:1), and capture is
    thread-local, so other threads may keep using CUDA meanwhile (other replicas serving)."""

    WARMUP = 3          # compiled calls on a side stream before capture (compile, autotune, lazy inits)

    def __init__(self, compiled, cudnn_benchmark=False):
        self.compiled, self.graphs, self.pool = compiled, {}, None
        self.cudnn_benchmark = cudnn_benchmark      # during warm-up and capture only: the flag is process-wide

    @torch.inference_mode()
    def __call__(self, *args, **kwargs):
        """Tensors, positional or by name (the generator takes names, a denoiser (x, sigma, **condition)); anything
        else (None, a number) is part of the shape key and passed as it is."""
        inputs = {**dict(enumerate(args)), **kwargs}
        tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        key = tuple(sorted(((str(k), (tuple(v.shape), v.dtype, str(v.device)) if k in tensors else repr(v))
                            for k, v in inputs.items())))
        device = next(iter(tensors.values())).device
        with torch.cuda.device(device):
            if key not in self.graphs:
                self.graphs[key] = self._capture(inputs, tensors, device)
            static, graph, outputs = self.graphs[key]
            for k, v in tensors.items():
                static[k].copy_(v, non_blocking=True)
            graph.replay()
        return outputs

    def _call(self, inputs):
        """The compiled module on `inputs` ({position or name: value}), as it was called."""
        positional = [inputs[i] for i in range(sum(isinstance(k, int) for k in inputs))]
        return self.compiled(*positional, **{k: v for k, v in inputs.items() if not isinstance(k, int)})

    def _capture(self, inputs, tensors, device):
        if not self.cudnn_benchmark:
            return self._capture_here(inputs, tensors, device)
        # cuDNN keeps its algorithm choices per thread, however they were made: on a thread that ran these
        # convolutions untimed before (another variant in `sida bench generate`) the flag alone would change
        # nothing. A fresh thread times every one of them.
        done = {}

        def capture():
            try:
                with torch.inference_mode(), torch.cuda.device(device), cudnn_benchmarking():
                    done['graph'] = self._capture_here(inputs, tensors, device)
            except BaseException as e:      # raised again on the caller's thread
                done['error'] = e
        thread = threading.Thread(target=capture, name='sida-cudnn-capture')
        thread.start()
        thread.join()
        if 'error' in done:
            raise done['error']
        torch.cuda.synchronize(device)      # the caller's stream, whichever it is, after the capture's
        return done['graph']

    def _capture_here(self, inputs, tensors, device):
        static = {**inputs, **{k: v.clone() for k, v in tensors.items()}}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self._call(static)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        # capture_begin/end, not torch.cuda.graph(): that one empties every GPU's allocator cache (other replicas')
        # and captures on a process-wide stream made on whichever device was current first.
        graph, capture = torch.cuda.CUDAGraph(), torch.cuda.Stream(device)
        with torch.cuda.stream(capture):
            graph.capture_begin(pool=self.pool, capture_error_mode='thread_local')
            try:
                outputs = self._call(static)
            finally:
                graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(capture)
        return static, graph, outputs


_BENCHMARKING = {'lock': threading.Lock(), 'count': 0, 'saved': None}


@contextlib.contextmanager
def cudnn_benchmarking():
    """cuDNN times its convolution algorithms while any cudnn-benchmark capture runs. The flag is process-wide, so
    overlapping captures (models warming on their own threads) are counted and the last one out restores it; and
    cuDNN does not empty the allocator's cache after each timing meanwhile (it would, on every GPU)."""
    keep_cache = getattr(torch._C, '_cudnn_set_conv_benchmark_empty_cache', lambda on: None)
    state = _BENCHMARKING
    with state['lock']:
        if state['count'] == 0:
            state['saved'] = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
            keep_cache(False)
        state['count'] += 1
    try:
        yield
    finally:
        with state['lock']:
            state['count'] -= 1
            if state['count'] == 0:
                torch.backends.cudnn.benchmark = state['saved']
                keep_cache(True)


def prepare_generator(generator, precision, options, device):
    """What compiling changes in the module itself: the denoiser as prepare_denoiser makes it, and a latent
    generator's VAE decoder cast to bf16 (not to fp16: VAEs can overflow there; it returns float32 all the same)."""
    generator = generator.to(device).eval()
    prepare_denoiser(generator.denoiser, precision, options)
    if generator.decoder is not None:
        if precision == 'bf16':
            generator.decoder.to(PRECISIONS[precision])
        if options.channels_last:
            generator.decoder.to(memory_format=torch.channels_last)
        if options.folded_torch_norm:
            fold_torch_group_norms(generator.decoder, FOLD_MIN_ELEMENTS)
        if options.fused_qkv:
            fuse_diffusers_qkv(generator.decoder)
    return generator


def prepare_denoiser(denoiser, precision, options):
    """The UNet body cast to the precision (the preconditioning stays float32), channels-last weights, and the model
    switches (GroupNorm's grouped view, FusedAffines, the decoder's concats, planar qkv). In place; returns the denoiser."""
    if precision not in PRECISIONS:
        raise ExportError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
    if precision != 'fp32':
        denoiser.model.to(PRECISIONS[precision])
        denoiser.compute_dtype = PRECISIONS[precision]
    if options.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    fused_norm = _fused_norm() if options.fused_norm else None
    for module in list(denoiser.modules()):
        if isinstance(module, GroupNorm):
            module.grouped_view_when_compiled = options.grouped_norm
            module.fused_silu_min_batch = fused_norm and fused_norm.min_batch(
                module.weight.shape[0], module.num_groups, module.weight.device)
            module.folded_min_batch = LARGE_BATCH if options.folded_norm else None
        if options.fused_affines and getattr(module, 'fused_affines', False) is None:
            fuse_affines(module)        # after the cast: the fused weights are copies
        if hasattr(module, 'channels_last_cat'):
            module.channels_last_cat = options.channels_last_cat
            module.split_skip_from = LARGE_BATCH if options.split_skip else None
        if options.planar_qkv and isinstance(module, UNetBlock) and module.num_heads:
            module.plan_qkv(LARGE_BATCH)    # after the cast: the reordered weights are copies
    if options.folded_torch_norm:
        fold_torch_group_norms(denoiser, FOLD_MIN_ELEMENTS)
    if options.fused_qkv:
        fuse_diffusers_qkv(denoiser)
    if options.channels_last_cat or options.folded_norm or options.folded_torch_norm:
        from torch._inductor import inductor_prims  # noqa: F401  (registers the layout op they trace)
    return denoiser


def fuse_diffusers_qkv(module):
    """Every diffusers model in `module` (SD's UNet, the VAE) with each attention's projections fused: q, k and v
    as one linear layer, k and v for cross-attention (diffusers' fuse_qkv_projections, after any cast: the fused
    weights are copies in the model's dtype; the separate ones stay, unused). Returns how many models."""
    models = [m for m in module.modules() if callable(getattr(m, 'fuse_qkv_projections', None))]
    for model in models:
        model.fuse_qkv_projections()
    return len(models)


def inductor_options_for(module, options):
    """options.inductor_options() for compiling `module`, with split-skip's pointwise concatenations (the decoder's
    parts read inside the norm's kernels) where split-skip acts: a sida UNet inside; a diffusers SD UNet keeps
    inductor's own choice, as measured."""
    inductor = options.inductor_options()
    if options.split_skip and any(hasattr(m, 'split_skip_from') for m in module.modules()):
        inductor['force_pointwise_cat'] = True
    return inductor


def _fused_norm():
    """models.fused_norm, imported (which registers sida::group_norm_silu), or why not."""
    try:
        import models.fused_norm
    except ImportError as e:
        raise ExportError(f'fused-norm needs Triton (it comes with CUDA builds of torch): {e}') from None
    return models.fused_norm


def compile_denoiser(denoiser, precision='bf16', options=None, device='cuda'):
    """A teacher's denoiser D(x, sigma, ...) compiled like the generator (same preparation and options): one graph per
    batch size, sigma a tensor input, so a sampler's every step replays it (bench teacher-vs-student)."""
    options = options or default_options(device)
    _check_device_switches(options, device)
    denoiser = prepare_denoiser(denoiser.to(device).eval(), precision, options)
    compiled = torch.compile(denoiser, options=inductor_options_for(denoiser, options), fullgraph=True, dynamic=False)
    return WholeGraph(compiled, options.cudnn_benchmark) if options.whole_graph else compiled


WARMUP_CALLS = 2       # CUDA graphs (reduce-overhead) record on the second call: the first request then replays them


def warm_up(compiled, config, buckets, device, make_inputs=None):
    """Compile (and capture) every bucket before serving; returns seconds per bucket. make_inputs(config, batch):
    the parity gate's inputs unless given (only their shapes and dtypes shape the compiled code)."""
    from export.parity import parity_inputs
    seconds = {}
    for b in buckets:
        inputs = {k: v.to(device) for k, v in (make_inputs or parity_inputs)(config, b).items()}
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(WARMUP_CALLS):
                compiled(**inputs)
        if str(device).startswith('cuda'):
            torch.cuda.synchronize()
        seconds[b] = round(time.perf_counter() - start, 2)
    return seconds


PROCESSES_ENV = 'SIDA_COMPILE_PROCESSES'
SAFE_PATH = ('-P',) if sys.version_info >= (3, 11) else ()     # a helper must not import from the server's cwd


class SideBySide:
    """Cold buckets compiled in helper processes while this one compiles its first, into the shared cache directory:
    this process then loads them (a cache hit) instead of compiling them one after another. Dynamo, AOT autograd and
    inductor's lowering run on one core per process, so a cold start with several buckets is mostly serial otherwise.
    Helpers: SIDA_COMPILE_PROCESSES, default one per cold bucket on CUDA (at most cores / 4, the largest buckets
    first), none on a CPU (there the helpers would compete with the C++ compiles for the same cores). `cold`: the
    buckets helpers may take (not the one this process compiles first)."""

    def __init__(self, bundle_dir, precision, options, cold, device, log=print):
        wanted = os.environ.get(PROCESSES_ENV)
        if wanted is not None and not wanted.strip().isdigit():
            raise ValueError(f'{PROCESSES_ENV} must be a whole number of helper processes, got {wanted!r}')
        limit = int(wanted) if wanted is not None else (
            max(1, len(os.sched_getaffinity(0)) // 4) if torch.device(device).type == 'cuda' else 0)
        self.buckets, self.log, self.started = tuple(cold[-limit:] if limit else ()), log, time.perf_counter()
        self.logs = tempfile.TemporaryDirectory(prefix='sida-compile-')
        self.helpers = {}
        try:
            compile_only = dataclasses.replace(options, whole_graph=False, cudnn_benchmark=False)     # no capture
            for b in self.buckets:      # the largest cold buckets: the slowest to compile
                with open(os.path.join(self.logs.name, f'{b}.log'), 'w') as out:
                    self.helpers[b] = subprocess.Popen(
                        [sys.executable, *SAFE_PATH, '-m', 'export.compiled', os.path.abspath(bundle_dir), precision,
                         str(compile_only), device, str(b)], stdout=out, stderr=subprocess.STDOUT, env=_helper_env())
        except BaseException:
            self.kill()
            raise
        if self.buckets:
            log(f'compile: buckets {list(self.buckets)} compile side by side in {len(self.buckets)} helper process(es)')

    def wait(self, timeout=1800):
        """Wait for the helpers; a failed one is logged with its last line (this process compiles that bucket itself)."""
        for b, proc in self.helpers.items():
            try:
                code = proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - self.started)))
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0:
                with open(os.path.join(self.logs.name, f'{b}.log')) as f:
                    lines = f.read().strip().splitlines() or ['(no output)']
                self.log(f'compile: helper for bucket {b} failed (exit {code}: {lines[-1][:300]}); compiling it here')
        if self.helpers:
            self.log(f'compile: helpers done after {time.perf_counter() - self.started:.1f} s')
        self.logs.cleanup()

    def kill(self):
        """This process failed or is stopping: the helpers' work is no use to anyone now."""
        for proc in self.helpers.values():
            proc.kill()
            proc.wait()
        self.logs.cleanup()


def _helper_env():
    """This environment (the cache directory included), with this package's root importable for `python -m`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, 'PYTHONPATH': os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p)}


class StagedWarmUp:
    """A compile's buckets warmed in stages, under the cache's warming lock while any is cold (one process at a time
    per compile, so the workers of `sida serve --workers N` load what the first compiled): first() warms the smallest
    bucket in this process while helpers compile the other cold ones (SideBySide); then `here` (what no helper took)
    warm in this process, wait() for the helpers, `from_helpers` load from the cache, and done() marks them warm. A server is ready
    after first() and warms the rest between batches; export, bench and `sida generate` run it all at once
    (warm_side_by_side). stop() ends it early: helpers killed, lock released."""

    def __init__(self, warm, cache, bundle_dir, precision, options, device, log=print):
        self.warm, self.cache, self.first_bucket = warm, cache, cache.buckets[0]
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(cache.warming())
        try:
            cold = [b for b in cache.cold_buckets() if b != self.first_bucket]
            self.helpers = SideBySide(bundle_dir, precision, options, cold, device, log)
        except BaseException:
            self._lock.close()
            raise
        self.from_helpers = list(self.helpers.buckets)
        self.here = [b for b in cache.buckets[1:] if b not in self.from_helpers]

    def first(self):
        self._or_stop(self.warm, [self.first_bucket])

    def warm_here(self):
        self._or_stop(self.warm, self.here)

    def wait(self):
        self._or_stop(self.helpers.wait)

    def warm_from_helpers(self):
        self._or_stop(self.warm, self.from_helpers)

    def done(self):
        self.cache.mark_warm()
        self._lock.close()

    def stop(self):
        self.helpers.kill()
        self._lock.close()

    def _or_stop(self, fn, *args):
        try:
            fn(*args)
        except BaseException:
            self.stop()
            raise


def warm_side_by_side(warm, cache, bundle_dir, precision, options, device, log=print):
    """warm(buckets) for every bucket of `cache` now, the cold ones after the first compiled by helpers meanwhile."""
    staged = StagedWarmUp(warm, cache, bundle_dir, precision, options, device, log)
    staged.first()
    staged.warm_here()
    staged.wait()
    staged.warm_from_helpers()
    staged.done()


def export_compiled(bundle_dir, precision=None, options=None, buckets=DEFAULT_BUCKETS, device=None, force=False, log=print):
    """Compile every bucket, gate it against eager fp32, and save the compiled code into the bundle as cache artifacts."""
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    precision = precision or ('bf16' if torch.device(device).type == 'cuda' else 'fp32')
    options = options or default_options(device)
    bundle = load_bundle(bundle_dir, return_float=True)
    key = cache_key(bundle.config, device, precision, options)
    cache = CompileCache(bundle_dir, key, buckets, *exported_entry(bundle_dir, bundle.config, precision), log=log)
    compiled = compile_generator(bundle.generator, precision, options, device)
    warm = {}
    warm_side_by_side(lambda bs: warm.update(warm_up(compiled, bundle.config, bs, device)), cache, bundle_dir, precision,
                      options, device, log)

    def run(inputs):
        with torch.inference_mode():
            return tuple(t.cpu().clone() for t in compiled(**{k: v.to(device) for k, v in inputs.items()}))
    report = run_parity(run, load_bundle(bundle_dir, return_float=True, device=device).generator, bundle.config, precision, buckets)
    gate(report, f'torch.compile ({options}, {precision})', force)
    file = artifacts_file(key)
    artifacts = save_artifacts(bundle.path / file)
    used = cache.finish()
    log(f'saved the compiled code ({artifacts}) to {bundle.path / file}')
    graphs = torch.device(device).type == 'cuda' and options.cuda_graphs()
    entry = {'runtime': 'torch.compile', 'file': str(file), 'precision': precision, 'mode': options.mode,
             'options': options.as_dict(), 'buckets': list(buckets), 'cuda_graphs': graphs,
             'warmup_seconds': warm, 'parity': report, 'forced': bool(force and not report['passed']), 'build_device': device,
             'bundle_sha256': bundle.config.sha256, 'versions': runtime_versions('torch'),
             'cache': {'file': str(file), 'key': key, 'artifacts': artifacts, 'counters': used['counters'],
                       'compile_seconds': used['compile_seconds']}}
    record_export(bundle_dir, f'torch_compile-{precision}', entry)
    return entry


def _compile_one_bucket(bundle_dir, precision, spec, device, bucket):
    """A SideBySide helper: compile one bucket into the shared cache directory, then exit (at once if the process
    that started it is gone, e.g. a server stopped by SIGTERM mid-start)."""
    import threading

    from export.compile_cache import use_cache_dir
    from models.seeds import example_inputs
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()
    use_cache_dir()
    bundle = load_bundle(bundle_dir, return_float=True)
    compiled = compile_generator(bundle.generator, precision, CompileOptions.parse(spec), device)
    seconds = warm_up(compiled, bundle.config, [int(bucket)], device, make_inputs=example_inputs)   # no text encoder
    print(json.dumps({'bucket': int(bucket), 'seconds': seconds}))


if __name__ == '__main__':
    _compile_one_bucket(*sys.argv[1:])
