"""Backends: one way to turn (noise, condition) into images, for each runtime.

Every backend takes the contract's inputs as CPU tensors ({'noise', 'class_labels' | 'text_embeds'}) and
returns uint8 images [N,H,W,3] as a numpy array; the torch backends on a GPU can also just queue a batch (`launch`)
and hand its images over later, which lets the server prepare the next batch meanwhile (serve/batcher.py). Noise is
always drawn by the host from the seeds, so a seed gives the same image on every backend (up to the runtime's
precision).
"""

import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from export.ensure import ExportMissing, recorded_export
from models.seeds import example_inputs
from serve.runtimes import parse_backend


class BackendUnavailable(RuntimeError):
    """This backend cannot run here (missing library, missing export, stale export); the message says why."""


def to_device(inputs, device):
    """CPU inputs onto `device`. To a GPU through pinned memory and without waiting: a pageable copy would first wait
    for everything already queued on the GPU, so the host could not prepare the next batch while this one runs."""
    if torch.device(device).type != 'cuda':
        return {k: v.to(device) for k, v in inputs.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in inputs.items()}


class Launched:
    """A batch queued on its device. Each chunk's images are copied into pinned host memory right behind it on the same
    stream, so the next chunk or batch may be queued at once: a graph replay cannot overwrite them before their copy
    ran. result() waits for the copies only, on any thread."""

    def __init__(self, device):
        self.device, self.parts, self.event = device, [], None

    def copy_back(self, images):
        """Queue the copy of device uint8 images [m, H, W, 3], the batch's next chunk; returns self."""
        if torch.device(self.device).type != 'cuda':
            self.parts.append(images.cpu())
            return self
        host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
        host.copy_(images, non_blocking=True)
        self.parts.append(host)
        self.event = torch.cuda.Event()             # behind every copy queued so far: one stream
        self.event.record(torch.cuda.current_stream(self.device))
        return self

    def result(self):
        """The images as a numpy array of their own: the pinned blocks go back to torch's cache at once (page-locked
        memory held by callers, e.g. `sida generate` keeping every batch, would never be given back)."""
        if self.event is None:
            return self.parts[0].numpy() if len(self.parts) == 1 else np.concatenate([p.numpy() for p in self.parts])
        self.event.synchronize()
        return np.concatenate([p.numpy() for p in self.parts])     # a copy even of one part


class Backend:
    name = 'base'
    pipelined = False          # has launch(): queues a batch and returns before it is done (the torch backends on CUDA)

    def __init__(self, bundle):
        self.bundle = bundle
        self.config = bundle.config
        self.device, self.precision, self.warm = 'cpu', 'fp32', False
        self.warmup_seconds = None
        self.warmup_batches = {}            # seconds per warmed batch size (compile: per bucket)
        self.warmup_calls = 1               # calls per batch size at warm-up

    def generate(self, inputs):
        raise NotImplementedError

    def warmup(self, batch_sizes=(1,)):
        started = time.perf_counter()
        for b in batch_sizes:
            begun = time.perf_counter()
            for _ in range(self.warmup_calls):
                self.generate(example_inputs(self.config, b))     # the right shapes, not real prompts
            self.warmup_batches[b] = round(time.perf_counter() - begun, 3)
        self.warmup_seconds = round(time.perf_counter() - started, 3)
        self.warm = True

    def warmup_to_serve(self):
        """What a server runs before it is ready; returns the StagedWarmUp of what it warms afterwards, if any."""
        self.warmup()
        return None

    def describe(self):
        # warmup_batches copied: the backend thread may add to it while the event loop reports it
        return {'backend': self.name, 'device': self.device, 'precision': self.precision, 'warm': self.warm,
                'warmup_seconds': self.warmup_seconds, 'warmup_batches': dict(self.warmup_batches)}


class TorchBackend(Backend):
    """Eager PyTorch; bf16 autocast on CUDA when asked."""

    name = 'torch'

    def __init__(self, bundle, device=None, precision='fp32'):
        super().__init__(bundle)
        self.device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
        self.precision = precision
        self.generator = bundle.generator.to(self.device).eval()
        self.generator.return_float = False

    @property
    def pipelined(self):
        return torch.device(self.device).type == 'cuda'

    def generate(self, inputs):
        return self.launch(inputs).result()

    @torch.inference_mode()
    def launch(self, inputs):
        feeds = to_device(inputs, self.device)
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.precision == 'bf16'):
            return Launched(self.device).copy_back(self.generator(**feeds))


_GRAPHS = 0


def make_room_for_graphs(count):
    """Dynamo keeps at most recompile_limit graphs per function, counted over every compiled copy of it in the process,
    and its guards tell devices apart: one process with a compiled replica on each of 3 GPUs holds 9 graphs of the
    generator's forward at 3 buckets each, over the default 8 (fullgraph then fails the warm-up). Raise it to what
    this process compiles."""
    global _GRAPHS
    from export.compile_cache import raise_recompile_limit
    _GRAPHS += count
    raise_recompile_limit(_GRAPHS)


class CompiledBackend(TorchBackend):
    """torch.compile with static shapes: batches are padded up to the next bucket, never recompiled under load.

    Options: given (bench), else --compile-mode alone, else those of the bundle's `sida export compile`, else the
    device default. Exported artifacts that fit these options are loaded first (export/compile_cache.py); the log
    says whether they were and how many graphs came from the cache."""

    name = 'compile'

    def __init__(self, bundle, device=None, precision=None, buckets=None, mode=None, options=None, log=None, max_batch=64):
        from export.compile_cache import CompileCache, cache_key, exported_entry
        from export.compiled import WARMUP_CALLS, CompileOptions, batch_buckets, compile_generator, default_options
        buckets = buckets or batch_buckets(max_batch)
        device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
        precision = precision or ('bf16' if torch.device(device).type == 'cuda' else 'fp32')
        Backend.__init__(self, bundle)
        self.device, self.precision, self.buckets = device, precision, tuple(sorted(buckets))
        entry, reason = exported_entry(bundle.path, self.config, precision)
        if options is None and entry is not None:   # --compile-mode changes the mode only: the export's switches stay
            exported = CompileOptions.parse(entry['options']['spec'])
            options = exported.adapted(mode or exported.mode, device)
        self.options = options or default_options(device, mode)
        self.mode = self.options.mode
        if torch.device(device).type == 'cuda' and self.options.cuda_graphs():
            self.warmup_calls = WARMUP_CALLS        # else the first request pays the CUDA graph recording (~30 ms)
        self.cache = CompileCache(bundle.path, cache_key(self.config, device, precision, self.options), self.buckets, entry, reason,
                                  log=log or logging.getLogger('sida.serve').info)
        try:
            self.generator = compile_generator(bundle.generator, precision, self.options, device)
        except ValueError as e:          # options this device cannot run (whole-graph off CUDA)
            raise BackendUnavailable(str(e)) from None
        self.usable = self.buckets          # the buckets batches run in: the warm ones once a staged warm-up began
        make_room_for_graphs(len(self.buckets))

    def warmup(self, batch_sizes=None):
        """Every bucket, the cold ones after the first compiled side by side (export/compiled.py: SideBySide)."""
        from export.compiled import warm_side_by_side
        started = time.perf_counter()
        warm_side_by_side(self.warm_buckets, self.cache, self.bundle.path, self.precision, self.options, self.device,
                          self.cache.log)
        self.warmup_seconds = round(time.perf_counter() - started, 3)
        self.cache.finish()

    def warmup_to_serve(self):
        """The smallest bucket now: a server is ready after it (larger batches run in pieces of the warm buckets
        meanwhile); the returned StagedWarmUp holds the rest, which the server warms between batches (serve/state.py),
        each through warm_buckets on the backend thread, then finish_warmup()."""
        from export.compiled import StagedWarmUp
        self.warmup_seconds = 0.0
        staged = StagedWarmUp(self.warm_buckets, self.cache, self.bundle.path, self.precision, self.options, self.device,
                              self.cache.log)
        self.usable = ()
        staged.first()
        return staged

    def warm_buckets(self, buckets):
        """Warm these buckets (their CUDA graphs recorded on this thread), then let batches use them."""
        before, usable = self.warmup_seconds or 0, self.usable
        self.usable = tuple(sorted({*usable, *buckets}))        # the warm-up's own batches run in them
        try:
            Backend.warmup(self, buckets)
        except BaseException:
            self.usable = usable
            raise
        self.warmup_seconds = round(before + self.warmup_seconds, 3)

    def finish_warmup(self, staged):
        """On the backend thread, after the staged warm-up's last bucket: marks and counts (dynamo's globals)."""
        staged.done()
        self.cache.finish()

    def describe(self):
        return {**super().describe(), 'compile_options': str(self.options), 'compile_cache': self.cache.report}

    @torch.inference_mode()
    def launch(self, inputs):
        n, usable = len(inputs['noise']), self.usable
        launched = Launched(self.device)
        for start in range(0, n, usable[-1]):
            chunk = {k: v[start:start + usable[-1]] for k, v in inputs.items()}
            m = len(chunk['noise'])
            bucket = next(b for b in usable if b >= m)
            padded = {k: torch.cat([v, v[-1:].expand(bucket - m, *v.shape[1:])]) if bucket > m else v for k, v in chunk.items()}
            launched.copy_back(self.generator(**to_device(padded, self.device))[0][:m])    # (images, images_float)
        return launched


def verified_export(bundle, kind, precision):
    """The manifest entry of an export that matches the bundle as it is now and passed its parity gate."""
    try:
        return recorded_export(bundle.path, bundle.config, kind, precision)
    except ExportMissing as e:
        raise BackendUnavailable(str(e)) from None


class OnnxBackend(Backend):
    """ONNX Runtime on the bundle's recorded ONNX export (refused if the bundle changed since)."""

    name = 'onnxruntime'

    def __init__(self, bundle, precision='fp32', device=None):
        super().__init__(bundle)
        entry = verified_export(bundle, 'onnx', precision)
        from export.onnx_export import ort_session
        self.session = ort_session(Path(bundle.path) / entry['file'], providers=onnx_providers(device))
        self.device = 'cuda' if 'CUDAExecutionProvider' in self.session.get_providers() else 'cpu'
        if self.device == 'cuda' and device is not None:
            self.device = str(torch.device(device))
        self.precision = precision

    def generate(self, inputs):
        return self.session.run(['images'], {k: v.numpy() for k, v in inputs.items()})[0]


def onnx_providers(device):
    """ONNX Runtime's providers for a device (None: its default order, CUDA first where present); cuda:N as device_id."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type == 'cpu':
        return ['CPUExecutionProvider']
    return [('CUDAExecutionProvider', {'device_id': device.index or 0}), 'CPUExecutionProvider']


class TensorRTBackend(Backend):
    """A serialized TensorRT engine from `sida export tensorrt` (GPU, inside an image that ships TensorRT)."""

    name = 'tensorrt'

    def __init__(self, bundle, precision='fp16', device=None):
        super().__init__(bundle)
        from export.tensorrt_export import EngineRunner, TensorRTUnavailable
        entry = verified_export(bundle, 'tensorrt', precision)
        if device is not None and torch.device(device).type != 'cuda':
            raise BackendUnavailable(f'the tensorrt backend runs on a CUDA GPU, not on {device}')
        self.device, self.precision = str(torch.device(device or 'cuda')), precision
        try:
            with self.on_device():          # the engine lives on the GPU that is current when it is deserialized
                self.runner = EngineRunner(Path(bundle.path) / entry['file'])
        except TensorRTUnavailable as e:
            raise BackendUnavailable(str(e)) from None

    def on_device(self):
        return torch.cuda.device(torch.device(self.device).index or 0)

    def generate(self, inputs):
        with self.on_device():
            return self.runner(inputs)[0].numpy()


class TritonBackend(Backend):
    """A client of a running Triton server (HTTP, KServe v2) serving this bundle's model."""

    name = 'triton'

    def __init__(self, bundle, url, model=None):
        super().__init__(bundle)
        try:
            import tritonclient.http as httpclient
        except ImportError:
            raise BackendUnavailable('the triton backend needs tritonclient: pip install "tritonclient[http]"') from None
        self.httpclient, self._clients = httpclient, threading.local()
        self.model = model or bundle.config.name
        self.device, self.url = f'triton:{url}', url

    @property
    def client(self):
        """One client per thread: tritonclient.http runs on gevent greenlets, which cannot cross threads."""
        if not hasattr(self._clients, 'client'):
            self._clients.client = self.httpclient.InferenceServerClient(self.url.replace('http://', ''))
        return self._clients.client

    def generate(self, inputs):
        dtypes = {'noise': 'FP32', 'class_labels': 'INT64', 'text_embeds': 'FP32'}
        feeds = []
        for name, tensor in inputs.items():
            array = tensor.numpy()
            if name == 'class_labels':
                array = array.reshape(-1, 1)            # Triton's [N, 1] view of a per-sample scalar
            feeds.append(self.httpclient.InferInput(name, list(array.shape), dtypes[name]))
            feeds[-1].set_data_from_numpy(array)
        outputs = [self.httpclient.InferRequestedOutput('images')]
        return self.client.infer(self.model, feeds, outputs=outputs).as_numpy('images')


def make_backend(name, bundle, triton_url=None, device=None, compile_mode=None, max_batch=64):
    """A backend by its name in the shared vocabulary (serve/runtimes.py), e.g. torch, torch-bf16, onnxruntime-fp16.
    auto: the fastest that works here (TensorRT or compile on CUDA, else a verified ONNX export, else eager torch).
    device: cpu, cuda or cuda:N (None: CUDA where present); max_batch: the largest batch it will be given (compile
    buckets up to it)."""
    on_gpu = torch.cuda.is_available() and (device is None or torch.device(device).type == 'cuda')
    if name == 'auto':
        if on_gpu:
            try:
                return TensorRTBackend(bundle, device=device)
            except BackendUnavailable:
                return CompiledBackend(bundle, device, mode=compile_mode, max_batch=max_batch)
        try:
            return OnnxBackend(bundle, device=device)
        except BackendUnavailable:
            return TorchBackend(bundle, device)
    try:
        runtime, precision = parse_backend(name)
    except ValueError as e:
        raise BackendUnavailable(f'{e}, or auto') from None
    if runtime == 'torch':
        return TorchBackend(bundle, device, precision or 'fp32')
    if runtime == 'compile':
        return CompiledBackend(bundle, device, precision, mode=compile_mode, max_batch=max_batch)
    if runtime == 'onnxruntime':
        return OnnxBackend(bundle, precision or 'fp32', device)
    if runtime == 'tensorrt':
        return TensorRTBackend(bundle, precision or 'fp16', device)
    if not triton_url:
        raise BackendUnavailable('the triton backend needs --triton-url')
    if device is not None:
        raise BackendUnavailable('--devices does not apply to the triton backend: the Triton server places its model '
                                 'instances on its GPUs itself (instance_group)')
    return TritonBackend(bundle, triton_url)
