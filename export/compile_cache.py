"""Persisted torch.compile caches, so a warm start loads compiled code instead of compiling it again.

Two of PyTorch's own mechanisms:
- a stable inductor cache directory (FX graph, AOT autograd, autotune and Triton kernel caches) that survives
  restarts: TORCHINDUCTOR_CACHE_DIR if set, else $SIDA_CACHE_DIR/compile, else ~/.cache/sida/compile (torch's
  own default lives in /tmp, which reboots and fresh containers lose);
- portable artifacts (`torch.compiler.save_cache_artifacts`, the "mega-cache") that `sida export compile` writes
  into the bundle under a key of everything that changes the compiled code; the compile backend loads them into
  the cache directory before it compiles, when the key matches.
Neither skips dynamo: it still traces the generator once per batch bucket, inductor still loads each graph and
CUDA graphs are captured again at every start (seconds per bucket). What they skip is inductor's code generation,
Triton compilation and max-autotune's benchmarking: most of a cold start.
"""

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch

from export.manifest import read_manifest

ENV = 'SIDA_CACHE_DIR'
ARTIFACTS_DIR = Path('exports') / 'torch_compile'


def cache_dir():
    """The directory inductor's caches persist in. A TORCHINDUCTOR_CACHE_DIR of the user's wins; torch's own default
    (in /tmp, which torch writes into the environment as soon as dynamo is imported) does not."""
    chosen = os.environ.get('TORCHINDUCTOR_CACHE_DIR')
    if chosen and os.path.abspath(chosen) != _torch_default_dir():
        return Path(chosen)
    return Path(os.environ.get(ENV) or Path.home() / '.cache' / 'sida') / 'compile'


def _torch_default_dir():
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:         # a torch without it: take any TORCHINDUCTOR_CACHE_DIR as the user's
        return None
    return os.path.abspath(default_cache_dir())


def use_cache_dir():
    """Point inductor at the persisted directory (it reads the variable at every use); call before compiling."""
    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = str(path)
    return path


def raise_recompile_limit(graphs, config=None):
    """Let dynamo keep at least `graphs` graphs per function and twice that in all. torch 2.7 renamed the settings
    (`cache_size_limit` became `recompile_limit`); the Docker image's default NGC 25.01 base ships torch 2.6."""
    import torch._dynamo.config
    config = config if config is not None else torch._dynamo.config
    renamed = hasattr(config, 'recompile_limit')
    for name, least in (('recompile_limit' if renamed else 'cache_size_limit', graphs),
                        ('accumulated_recompile_limit' if renamed else 'accumulated_cache_size_limit', 2 * graphs)):
        setattr(config, name, max(getattr(config, name), least))


def device_name(device):
    """Compiled code is specific to the GPU model (Triton kernels, autotuning), not to one card."""
    device = torch.device(device)
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        return f'{torch.cuda.get_device_name(device)} (sm_{major}{minor})'
    return device.type


def cache_key(config, device, precision, options):
    """Everything that changes the compiled code of one bundle, apart from the batch buckets (one graph each)."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {'bundle_sha256': config.sha256, 'torch': torch.__version__, 'triton': triton_version,
            'device': device_name(device), 'precision': precision, 'options': options.as_dict()}


def key_mismatch(exported, wanted):
    """Why exported artifacts do not fit this compile: 'field: exported X, here Y' for each difference. Options compare
    by their spelling (MODE+switches), so an export from before a switch existed still fits a compile without it."""
    def same(k):
        if k == 'options' and isinstance(exported.get(k), dict) and 'spec' in exported[k]:
            from export.compiled import CompileOptions
            return str(CompileOptions.parse(exported[k]['spec'])) == wanted[k]['spec']
        return exported.get(k) == wanted[k]
    return [f'{k}: exported {exported.get(k)!r}, here {wanted[k]!r}' for k in wanted if not same(k)]


def artifacts_file(key):
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return ARTIFACTS_DIR / f'{key["precision"]}-{key["options"]["spec"]}-{digest}.bin'


def save_artifacts(path):
    """Every cache entry this process compiled or loaded, as one portable file; {artifact type: count}."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return {}
    data, info = saved
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return _counts(info)


def load_artifacts(path):
    """Write a saved file's entries into the cache directory; {artifact type: count}."""
    return _counts(torch.compiler.load_cache_artifacts(Path(path).read_bytes()))


def _counts(info):
    """{artifact type: count} of a CacheInfo (one dict of lists in newer torch, a list field per type in older)."""
    kinds = getattr(info, 'artifacts', None) if info is not None else {}
    if kinds is None:
        kinds = {name.removesuffix('_artifacts'): keys for name, keys in vars(info).items()}
    return {kind: len(keys) for kind, keys in kinds.items() if keys}


def counters():
    """Cache hits and misses so far in this process (torch's own counters)."""
    from torch._dynamo.utils import counters as c
    return {'fxgraph_hit': c['inductor']['fxgraph_cache_hit'], 'fxgraph_miss': c['inductor']['fxgraph_cache_miss'],
            'fxgraph_bypass': c['inductor']['fxgraph_cache_bypass'],
            'aot_autograd_hit': c['aot_autograd']['autograd_cache_hit'],
            'aot_autograd_miss': c['aot_autograd']['autograd_cache_miss']}


def counters_since(before):
    """Cache hits and misses since `before` (an earlier counters())."""
    now = counters()
    return {k: now[k] - before[k] for k in now}


def describe(delta):
    """One phrase for a counters_since() delta: what came from the cache directory and what was compiled."""
    return (f'{delta["fxgraph_hit"]} graph(s) loaded from the cache, {delta["fxgraph_miss"]} compiled, '
            f'{delta["fxgraph_bypass"]} uncacheable ({cache_dir()})')


def compile_seconds(top=8):
    """Where compile time went in this process (dynamo's timers, summed per phase), the largest first."""
    from torch._dynamo.utils import compilation_time_metrics
    totals = {name: round(sum(values), 2) for name, values in compilation_time_metrics.items()}
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])[:top])


def exported_entry(bundle_dir, config, precision):
    """(manifest entry, None) of a usable `sida export compile` of this bundle, or (None, why not)."""
    entry = read_manifest(bundle_dir)['exports'].get(f'torch_compile-{precision}')
    if entry is None:
        return None, f'no {precision} compile export (`sida export compile --bundle {bundle_dir}` makes one)'
    if entry.get('bundle_sha256') != config.sha256:
        return None, 'the compile export is stale (bundle weights changed)'
    if not entry['parity']['passed']:
        return None, 'the compile export failed its parity gate'
    if not (entry.get('cache') or {}).get('file'):
        return None, 'the compile export carries no cache artifacts (made by an older sida)'
    return entry, None


class CompileCache:
    """One compile's caches: the directory, exported artifacts loaded (or why not), hits and misses after warm-up."""

    def __init__(self, bundle_dir, key, buckets, entry=None, reason=None, log=print):
        self.dir, self.log, self.before = use_cache_dir(), log, counters()
        self.buckets, self.digest = tuple(buckets), artifacts_file(key).stem
        self.warm_dir = self.dir / 'sida-warm'         # a marker per bucket warmed here, and the warming lock
        self.report = {'dir': str(self.dir), 'exported': None}
        if entry is not None:
            mismatch = key_mismatch(entry['cache']['key'], key)
            missing = sorted(set(buckets) - set(entry['buckets']))
            if mismatch:
                reason = 'exported for another setup (' + '; '.join(mismatch) + ')'
            else:
                path = Path(bundle_dir) / entry['cache']['file']
                try:
                    self.report['exported'] = {'file': str(path), 'loaded': load_artifacts(path), 'buckets_not_exported': missing}
                except OSError as e:
                    reason = f'cannot read {path}: {e}'
        if self.report['exported']:
            log(f'compile cache: loaded exported artifacts {path} into {self.dir}'
                + (f' (buckets {missing} were not exported: they compile now)' if missing else ''))
        else:
            self.report['exported_miss'] = reason
            log(f'compile cache: not using exported artifacts ({reason}); cache dir {self.dir}')

    def cold_buckets(self):
        """The buckets neither exported nor warmed in this cache directory before: the ones that will compile."""
        not_exported = (self.report['exported'] or {}).get('buckets_not_exported', self.buckets)
        return [b for b in self.buckets if b in not_exported and not self._marker(b).exists()]

    def _marker(self, bucket):
        return self.warm_dir / f'{self.digest}-{bucket}'

    @contextlib.contextmanager
    def warming(self):
        """Held while this compile's buckets warm up, if any of them is cold: one process at a time per cache directory
        and compile (the others then load its graphs). Once all are warm, workers load side by side; a lock taken
        every time made four workers on a warm cache ready one after another, at 21, 33, 44 and 57 s (H100,
        2026-12-07)."""
        import fcntl
        if not self.cold_buckets():
            yield
            return
        self.warm_dir.mkdir(exist_ok=True)
        with open(self.warm_dir / f'{self.digest}.lock', 'w') as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.log('compile cache: another process is warming the same compile; waiting for it, then loading its graphs')
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def mark_warm(self):
        """After warm-up: these buckets are in the cache directory, so a restart starts no helpers for them. Not when
        a graph bypassed the cache (it would compile again anyway)."""
        if counters()['fxgraph_bypass'] > self.before['fxgraph_bypass']:
            return
        self.warm_dir.mkdir(exist_ok=True)
        for b in self.buckets:
            self._marker(b).touch()

    def finish(self):
        """After warm-up: how many graphs came from the cache; logged and kept in the report."""
        delta = counters_since(self.before)
        self.report.update(counters=delta, compile_seconds=compile_seconds())
        self.log(f'compile cache: {describe(delta)}')
        return self.report
