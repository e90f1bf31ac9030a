"""torch.compile as an export: the parity gate, the manifest, and the compiled code carried to a fresh process."""

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

from export.compile_cache import load_artifacts
from export.compiled import CompileOptions, default_options
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
    assert entry['runtime'] == 'torch.compile' and entry['options']['spec'] == 'default+freezing+channels-last+fused-affines'
    # The compiled generator is the eager one, in floats too (compiling is slow on a CPU: one compile covers both).
    assert entry['parity']['passed'] and all(row['max_abs_float'] <= 1e-4 for row in entry['parity']['batches']), entry['parity']
    assert entry['cache']['counters']['fxgraph_miss'] >= 1 and entry['cache']['artifacts'].get('inductor')

    served = json.loads(run(['-c', SERVE, str(class_bundle)], tmp_path / 'machine').stdout.splitlines()[-1])
    cache = served['compile_cache']
    assert served['compile_options'] == 'default+freezing+channels-last+fused-affines'
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
    # --compile-mode replaces the default's mode, not its switches; a mode with its own CUDA graphs drops whole-graph
    assert str(default_options('cuda')) == ('default+channels-last+fused-affines+channels-last-cat+folded-norm+split-skip+planar-qkv'
                                            '+whole-graph')
    assert str(default_options('cpu')) == 'default+fused-affines'
    assert str(default_options('cuda', 'max-autotune')) == ('max-autotune+channels-last+fused-affines+channels-last-cat+folded-norm'
                                                          '+split-skip+planar-qkv')
    assert str(default_options('cuda', 'reduce-overhead')) == ('reduce-overhead+channels-last+fused-affines+channels-last-cat'
                                                             '+folded-norm+split-skip+planar-qkv')
    assert default_options('cuda', 'max-autotune-no-cudagraphs').whole_graph
    every = CompileOptions.parse('default+planar-qkv+channels-last-cat+pointwise-cat+combo-kernels+fused-affines+grouped-norm'
                                 '+split-skip')
    assert str(every) == 'default+grouped-norm+fused-affines+combo-kernels+pointwise-cat+channels-last-cat+split-skip+planar-qkv'
    assert CompileOptions.parse('default+fast-math').inductor_options()['use_fast_math']
    assert every.inductor_options() == {'combo_kernels': True, 'force_pointwise_cat': True}  # the other two: the model
    tuned = CompileOptions.parse('default+whole-graph+cudnn-benchmark+coordinate-descent')
    assert str(tuned) == 'default+coordinate-descent+cudnn-benchmark+whole-graph'
    assert tuned.inductor_options() == {'coordinate_descent_tuning': True}   # cudnn-benchmark: WholeGraph's capture
    assert str(tuned.adapted('reduce-overhead', 'cuda')) == 'reduce-overhead+coordinate-descent'
    for bad, words in (('fast', 'compile mode must be one of'), ('default+fp8', "unknown switch 'fp8'"),
                       ('default+cudnn-benchmark', 'use it with whole-graph'),
                       ('reduce-overhead+whole-graph', 'captures its own CUDA graph')):
        with pytest.raises(ValueError, match=words):
            CompileOptions.parse(bad)
    whole = CompileOptions.parse('default+channels-last+whole-graph')
    assert whole.cuda_graphs() and 'triton.cudagraphs' not in whole.inductor_options()


def test_whole_graph_needs_cuda(class_bundle):
    from export.compiled import compile_denoiser, compile_generator
    from models.bundle import load_bundle
    with pytest.raises(ValueError, match='needs a CUDA device, not cpu'):
        compile_generator(load_bundle(class_bundle).generator, 'fp32', CompileOptions.parse('default+whole-graph'), 'cpu')
    with pytest.raises(ValueError, match='needs a CUDA device, not cpu'):
        compile_denoiser(load_bundle(class_bundle).generator.denoiser, 'fp32', CompileOptions.parse('default+whole-graph'), 'cpu')
    from serve.backends import BackendUnavailable, CompiledBackend
    with pytest.raises(BackendUnavailable, match='whole-graph captures a CUDA graph: it needs a CUDA device, not cpu'):
        CompiledBackend(load_bundle(class_bundle), 'cpu', options=CompileOptions.parse('default+whole-graph'))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='whole-graph captures a CUDA graph: needs a GPU')
def test_whole_graph_replays_what_the_compiled_generator_computes(class_bundle):
    """Each shape captured once; a replay with new inputs gives the compiled generator's own answer for them, and a
    second shape does not disturb the first one's graph."""
    from export.compiled import WholeGraph, compile_generator
    from export.parity import parity_inputs
    from models.bundle import load_bundle
    config = load_bundle(class_bundle).config
    plain = compile_generator(load_bundle(class_bundle).generator, 'bf16', CompileOptions.parse('default'), 'cuda')
    whole = compile_generator(load_bundle(class_bundle).generator, 'bf16',
                              CompileOptions.parse('default+cudnn-benchmark+whole-graph'), 'cuda')
    assert isinstance(whole, WholeGraph) and whole.cudnn_benchmark
    benchmark, seen, call = torch.backends.cudnn.benchmark, [], whole._call
    whole._call = lambda inputs: seen.append((torch.backends.cudnn.benchmark, threading.current_thread().name)) or call(inputs)
    with torch.inference_mode():
        for batch in (1, 4, 1):
            for seed in (0, 1):
                inputs = {k: v.cuda() for k, v in parity_inputs(config, batch).items()}
                inputs['noise'] = torch.randn(inputs['noise'].shape, generator=torch.Generator().manual_seed(seed)).cuda()
                torch.testing.assert_close(whole(**inputs)[1].clone(), plain(**inputs)[1], atol=1e-2, rtol=1e-2)
    assert len(whole.graphs) == 2
    assert torch.backends.cudnn.benchmark == benchmark      # timed during capture only: the flag is process-wide
    assert seen and all(seen_flag and name == 'sida-cudnn-capture' for seen_flag, name in seen)  # on, on a fresh thread


@pytest.mark.skipif(not torch.cuda.is_available(), reason='the fused kernel inside a compiled graph: needs a GPU')
def test_a_compiled_generator_with_fused_norm_matches_the_plain_compile(class_bundle, monkeypatch):
    """Every UNet norm + SiLU through the kernel (forced at any batch), under compile and whole-graph: the same images
    as the plain compile, to bf16's tolerance, and the op really in the graph."""
    import models.fused_norm
    from export.compiled import CompileOptions, compile_generator
    from export.parity import parity_inputs
    from models.bundle import load_bundle
    monkeypatch.setattr(models.fused_norm, '_min_programs', lambda device: 1)
    calls = []
    real = models.fused_norm.launch
    monkeypatch.setattr(models.fused_norm, 'launch', lambda *a, **k: calls.append(1) or real(*a, **k))
    config = load_bundle(class_bundle).config
    plain = compile_generator(load_bundle(class_bundle).generator, 'bf16', CompileOptions.parse('default+channels-last'),
                              'cuda')
    fused = compile_generator(load_bundle(class_bundle).generator, 'bf16',
                              CompileOptions.parse('default+channels-last+fused-norm+whole-graph'), 'cuda')
    inputs = {k: v.cuda() for k, v in parity_inputs(config, 16).items()}
    with torch.inference_mode():
        torch.testing.assert_close(fused(**inputs)[1].clone(), plain(**inputs)[1], atol=3e-2, rtol=3e-2)
    assert calls, 'the fused kernel was never traced into the graph'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='the fused attention and pointwise concats of CUDA: needs a GPU')
def test_a_compiled_generator_with_the_profile_switches_matches_the_plain_compile(class_bundle):
    """The decoder's concats kept apart, q, k, v handed to the fused attention as views, the norms folded (at batch
    LARGE_BATCH, where they act, and at batch 1, where they do not) and fast exp, under compile and whole-graph: the
    same images as the plain compile, to bf16's tolerance."""
    from export.compiled import LARGE_BATCH, CompileOptions, compile_generator
    from export.parity import parity_inputs
    from models.bundle import load_bundle
    config = load_bundle(class_bundle).config
    plain = compile_generator(load_bundle(class_bundle).generator, 'bf16', CompileOptions.parse('default+channels-last'),
                              'cuda')
    split = compile_generator(load_bundle(class_bundle).generator, 'bf16', CompileOptions.parse(
        'default+channels-last+folded-norm+split-skip+planar-qkv+fast-math+whole-graph'), 'cuda')
    for batch in (LARGE_BATCH, 1):
        inputs = {k: v.cuda() for k, v in parity_inputs(config, batch).items()}
        with torch.inference_mode():
            torch.testing.assert_close(split(**inputs)[1].clone(), plain(**inputs)[1], atol=3e-2, rtol=3e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='whole-graph captures a CUDA graph: needs a GPU')
def test_whole_graph_denoiser_takes_a_samplers_positional_call(class_bundle):
    """A teacher's denoiser as a sampler calls it, D(x, sigma, class_labels=...): one graph for every step's sigma
    (a tensor input), each replay the compiled denoiser's own answer (the teacher-vs-student bench compiles it so)."""
    from export.compiled import WholeGraph, compile_denoiser
    from models.bundle import load_bundle
    denoiser = lambda: load_bundle(class_bundle).generator.denoiser        # noqa: E731
    plain = compile_denoiser(denoiser(), 'bf16', CompileOptions.parse('default'), 'cuda')
    whole = compile_denoiser(denoiser(), 'bf16', CompileOptions.parse('default+whole-graph'), 'cuda')
    assert isinstance(whole, WholeGraph)
    classes = len(load_bundle(class_bundle).config.label_names)
    x = torch.randn(4, 3, 32, 32, device='cuda')
    labels = torch.nn.functional.one_hot(torch.arange(4, device='cuda') % classes, classes).float()   # as samplers pass them
    with torch.inference_mode():
        for sigma in (80.0, 2.5, 0.1):
            s = torch.full((4,), sigma, device='cuda')
            torch.testing.assert_close(whole(x * sigma, s, class_labels=labels).clone(), plain(x * sigma, s, class_labels=labels),
                                       atol=2e-2, rtol=2e-2)
    assert len(whole.graphs) == 1


def _cache(tmp_path, monkeypatch, buckets=(1, 8, 64)):
    from export.compile_cache import CompileCache
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR', raising=False)
    monkeypatch.setenv('SIDA_CACHE_DIR', str(tmp_path / 'machine'))
    logs = []
    key = {'bundle_sha256': 'x', 'precision': 'fp32', 'options': CompileOptions().as_dict()}
    return CompileCache(tmp_path, key, buckets, log=logs.append), logs


def test_warmed_buckets_are_marked_so_a_restart_starts_no_helpers(tmp_path, monkeypatch):
    cache, _ = _cache(tmp_path, monkeypatch)
    assert cache.cold_buckets() == [1, 8, 64]
    cache.mark_warm()
    again, _ = _cache(tmp_path, monkeypatch)                       # a restart on the same cache directory
    assert again.cold_buckets() == []
    other, _ = _cache(tmp_path, monkeypatch, buckets=(1, 8, 128))  # a larger --max-batch: only the new bucket is cold
    assert other.cold_buckets() == [128]


def test_a_second_process_warming_the_same_compile_waits_for_the_first(tmp_path, monkeypatch):
    """`sida serve --workers N`: one warms (helpers and all), the others wait, then find the buckets warm."""
    import threading
    first, _ = _cache(tmp_path, monkeypatch)
    second, logs = _cache(tmp_path, monkeypatch)
    order = []

    def second_process():
        with second.warming():
            order.append('second in')
    with first.warming():
        waiter = threading.Thread(target=second_process)
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and 'another process is warming the same compile' in logs[-1]
        first.mark_warm()
        order.append('first done')
    waiter.join(10)
    assert order == ['first done', 'second in'] and second.cold_buckets() == []
    # every bucket warm: a third process loads at once, beside one that still holds the lock
    import fcntl
    third, logs = _cache(tmp_path, monkeypatch)
    with open(next(third.warm_dir.glob('*.lock')), 'w') as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        loader = threading.Thread(target=lambda: third.warming().__enter__())
        loader.start()
        loader.join(5)
        fcntl.flock(held, fcntl.LOCK_UN)        # (a waiting loader, the old way, gets in now and the test fails)
        assert not loader.is_alive() and not any('another process is warming' in line for line in logs)


def test_a_failed_helper_is_reported_and_its_bucket_compiled_here(tmp_path, monkeypatch):
    from export.compiled import SideBySide
    monkeypatch.setenv('SIDA_COMPILE_PROCESSES', '1')
    logs = []
    helpers = SideBySide(tmp_path / 'no-such-bundle', 'fp32', CompileOptions(), [8, 64], 'cpu', logs.append)
    assert helpers.buckets == (64,) and 'buckets [64] compile side by side in 1 helper' in logs[0]
    helpers.wait()
    assert 'helper for bucket 64 failed (exit 1' in logs[1] and 'compiling it here' in logs[1], logs
    # a helper only compiles: the capture's switches are not its business (they used to fail its options' check)
    helpers = SideBySide(tmp_path / 'no-such-bundle', 'fp32', CompileOptions.parse('default+cudnn-benchmark+whole-graph'),
                         [8, 64], 'cpu', logs.append)
    helpers.wait()
    monkeypatch.setenv('SIDA_COMPILE_PROCESSES', 'many')
    with pytest.raises(ValueError, match='SIDA_COMPILE_PROCESSES must be a whole number'):
        SideBySide(tmp_path, 'fp32', CompileOptions(), [1, 8], 'cpu')


def test_cudnn_benchmarking_overlapping_captures_leave_the_flag_as_it_was():
    """The flag is process-wide: two captures on two threads, the first out early, keep it on until the last is out."""
    from export.compiled import cudnn_benchmarking
    before = torch.backends.cudnn.benchmark
    first, second = cudnn_benchmarking(), cudnn_benchmarking()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert torch.backends.cudnn.benchmark is True
    second.__exit__(None, None, None)
    assert torch.backends.cudnn.benchmark == before
    with pytest.raises(RuntimeError), cudnn_benchmarking():
        raise RuntimeError('a failed warm-up')
    assert torch.backends.cudnn.benchmark == before


def test_compile_generator_sets_up_the_model_switches(class_bundle):
    """grouped-norm turns GroupNorm's grouped view on, fused-affines gives the UNet one embedding projection,
    channels-last-cat lays its concats out channels-last, split-skip keeps them apart, planar-qkv reorders qkv."""
    from export.compiled import compile_generator
    from models.bundle import load_bundle
    from models.layers import GroupNorm, UNetBlock
    for spec, on in (('default', False), ('default+grouped-norm+fused-affines+channels-last-cat+split-skip+planar-qkv', True)):
        generator = load_bundle(class_bundle).generator
        compile_generator(generator, 'fp32', CompileOptions.parse(spec), 'cpu')     # compiles lazily: nothing runs here
        norms = [m for m in generator.modules() if isinstance(m, GroupNorm)]
        assert norms and all(m.grouped_view_when_compiled is on for m in norms)
        unet = generator.denoiser.model
        assert (unet.fused_affines is not None) is on and unet.channels_last_cat is on and (unet.split_skip_from == 32) is on
        attending = [m for m in generator.modules() if isinstance(m, UNetBlock) and m.num_heads]
        assert attending and all((m.qkv_planar_weight is not None and m.qkv_planar_from == 32) is on for m in attending)


def test_split_skips_pointwise_concats_only_where_split_skip_acts(class_bundle):
    """A sida UNet compiles with inductor's force_pointwise_cat under split-skip; a network without sida's UNet (a
    diffusers SD UNet, here any other module) keeps inductor's own choice."""
    from export.compiled import inductor_options_for
    from models.bundle import load_bundle
    options = CompileOptions.parse('default+split-skip')
    assert inductor_options_for(load_bundle(class_bundle).generator, options)['force_pointwise_cat']
    assert 'force_pointwise_cat' not in inductor_options_for(torch.nn.Conv2d(4, 4, 3), options)
    assert inductor_options_for(torch.nn.Conv2d(4, 4, 3), CompileOptions.parse('default+pointwise-cat'))['force_pointwise_cat']


def test_an_export_from_before_a_switch_existed_still_fits():
    """Options compare by spelling: an exported key whose options lack a later switch's field is the same compile."""
    from export.compile_cache import key_mismatch
    wanted = {'torch': '2.11', 'options': CompileOptions.parse('reduce-overhead+channels-last').as_dict()}
    old = {'torch': '2.11', 'options': {'spec': 'reduce-overhead+channels-last', 'mode': 'reduce-overhead',
                                        'freezing': False, 'channels_last': True}}
    assert key_mismatch(old, wanted) == []
    assert key_mismatch({**old, 'torch': '2.10'}, wanted) == ["torch: exported '2.10', here '2.11'"]
    other = {**old, 'options': {**old['options'], 'spec': 'reduce-overhead'}}
    assert [m.split(':')[0] for m in key_mismatch(other, wanted)] == ['options']


def test_folded_torch_norm_folds_a_latent_generators_unet_and_decoder(tmp_path):
    """folded-torch-norm reaches every torch.nn.GroupNorm of an SD-shaped generator (diffusers UNet and VAE decoder),
    for calls of FOLD_MIN_ELEMENTS values or more; without the switch none is touched."""
    pytest.importorskip('diffusers', reason='the [t2i] extra is not installed')
    from bench import presets
    from export.compiled import FOLD_MIN_ELEMENTS, prepare_generator
    from models.bundle import load_bundle
    from models.layers import FoldedTorchGroupNorm
    path = presets.resolve_bundle('preset:tiny-sd', work_dir=tmp_path / 'presets', log=lambda m: None)
    for spec, on in (('default', False), ('default+folded-torch-norm', True)):
        generator = prepare_generator(load_bundle(path).generator, 'fp32', CompileOptions.parse(spec), 'cpu')
        for part in (generator.denoiser, generator.decoder):
            norms = [m for m in part.modules() if isinstance(m, torch.nn.GroupNorm)]
            assert norms and all((type(m) is FoldedTorchGroupNorm) is on for m in norms)
            assert all(m.min_elements == FOLD_MIN_ELEMENTS for m in norms if on)


def test_fused_qkv_sends_an_sd_generators_attention_through_one_projection_with_the_same_images(tmp_path):
    """fused-qkv: every diffusers attention of an SD-shaped generator (UNet self-attention and the VAE's: q, k, v;
    cross-attention: k, v) runs one fused projection instead of separate ones, and the generator makes the same
    images, eager and compiled (inductor, CPU); without the switch the separate projections run."""
    pytest.importorskip('diffusers', reason='the [t2i] extra is not installed')
    from diffusers.models.attention_processor import Attention

    from bench import presets
    from export.compiled import compile_generator, prepare_generator
    from export.parity import parity_inputs
    from models.bundle import load_bundle
    path = presets.resolve_bundle('preset:tiny-sd', work_dir=tmp_path / 'presets', log=lambda m: None)
    bundle = load_bundle(path)
    inputs = parity_inputs(bundle.config, 2)

    def run(spec):
        generator = prepare_generator(load_bundle(path).generator, 'fp32', CompileOptions.parse(spec), 'cpu')
        called = []
        for m in generator.modules():
            for name in ('to_q', 'to_k', 'to_v', 'to_qkv', 'to_kv'):
                if isinstance(m, Attention) and hasattr(m, name):
                    getattr(m, name).register_forward_hook(lambda *a, name=name: called.append(name))
        with torch.no_grad():
            generator.return_float = True
            images = generator(**inputs)[1]
        return images, called

    expected, plain = run('default')
    fused_images, fused = run('default+fused-qkv')
    attentions = sum(isinstance(m, Attention) for m in bundle.generator.modules())
    assert attentions >= 3 and 'to_qkv' not in plain and plain.count('to_q') >= attentions
    assert 'to_k' not in fused and 'to_v' not in fused and fused.count('to_qkv') > 0 and fused.count('to_kv') > 0
    assert fused.count('to_q') == fused.count('to_kv')             # cross-attention: its query alone, k and v fused
    assert fused.count('to_qkv') + fused.count('to_kv') == plain.count('to_q')       # every attention call still runs
    torch.testing.assert_close(fused_images, expected, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
    compiled = compile_generator(load_bundle(path).generator, 'fp32', CompileOptions.parse('default+fused-qkv'), 'cpu')
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs)[1], expected, atol=1e-4, rtol=1e-4)
