"""Training checkpoints: atomic, complete, and readable without pickle.

    checkpoints/checkpoint-000000123456/     (images seen, zero-padded so names sort by age)
      sida.json, generator.safetensors       the EMA generator as a bundle (loadable by `sida generate`)
      state/<name>.safetensors               every module and optimiser state (param groups in metadata)
      state/rng.safetensors                  CPU/CUDA RNG states and the loop's own generators
      state/progress.json                    images seen, iteration, data draws, best metric, ...
A checkpoint is written into `<name>.tmp/` and renamed into place, so a crash mid-write leaves the
previous checkpoints untouched; `find_latest` only ever sees complete ones.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

PATTERN = re.compile(r'^checkpoint-(\d{12})$')


def checkpoint_name(images_seen):
    return f'checkpoint-{images_seen:012d}'


def save_optimizer(path, optimizer):
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state['state'].items():
        for key, value in values.items():
            tensors[f'{index}.{key}'] = value.detach().cpu().contiguous() if torch.is_tensor(value) else torch.tensor(value)
    save_file(tensors, str(path), metadata={'param_groups': json.dumps(state['param_groups'])})


HYPERPARAMETERS = ('lr', 'betas', 'eps', 'weight_decay')


def load_optimizer(path, optimizer, scheduled=()):
    """Restore `optimizer` from `path`, hyperparameters included; returns where this run's own settings differ and were
    ignored ('betas (0.9, 0.999) kept, not (0.0, 0.999)'). `scheduled`: hyperparameters the trainer sets every
    iteration anyway (a ramped lr), not compared."""
    with safe_open(str(path), framework='pt') as f:
        groups = json.loads(f.metadata()['param_groups'])
        state = {}
        for key in f.keys():
            index, name = key.split('.', 1)
            state.setdefault(int(index), {})[name] = f.get_tensor(key)
    # A resumed run is the checkpointed run: its hyperparameters come from the checkpoint, whatever the resuming
    # command line says (differences are reported). The kernel choice (fused / foreach) is this machine's: a run
    # checkpointed on CPU or by an older version resumes on the fused CUDA kernel.
    ignored = []
    for index, (group, live) in enumerate(zip(groups, optimizer.param_groups)):
        if 'betas' in group:
            group['betas'] = tuple(group['betas'])
        for key in HYPERPARAMETERS:
            if key not in scheduled and key in group and key in live and group[key] != live[key]:
                ignored.append(f'{key} {group[key]} kept, not {live[key]}' + (f' (group {index})' if len(groups) > 1 else ''))
        group.update({key: live[key] for key in ('fused', 'foreach', 'capturable') if key in live})
    optimizer.load_state_dict({'state': state, 'param_groups': groups})
    return ignored


def save_module(path, module):
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))


def load_module(path, module):
    module.load_state_dict(load_file(str(path)), strict=True)


def rng_state(generators):
    state = {'torch_cpu': torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f'torch_cuda{i}'] = s
    for name, g in generators.items():
        state[f'gen_{name}'] = g.get_state()
    return state


def set_rng_state(state, generators):
    torch.set_rng_state(state['torch_cpu'])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith('torch_cuda'))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    for name, g in generators.items():
        g.set_state(state[f'gen_{name}'])


def write_checkpoint(run_dir, images_seen, write_contents, keep_last=3, keep=()):
    """write_contents(tmp_dir) fills a fresh directory; it becomes a checkpoint atomically."""
    root = Path(run_dir) / 'checkpoints'
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(images_seen)
    tmp = root / (final.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / 'state').mkdir(parents=True)
    write_contents(tmp)
    _fsync_tree(tmp)
    old = root / (final.name + '.old')
    if final.exists():                 # re-saving the same image count: the old one stays whole until the swap
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    prune(root, keep_last, keep=set(keep) | {final.name})
    return final


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path):
    """Data on disk before the rename makes it visible (a power cut must not leave empty files behind)."""
    for p in Path(path).rglob('*'):
        if p.is_file():
            with open(p, 'rb') as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def prune(root, keep_last, keep=()):
    complete = sorted(p for p in Path(root).iterdir() if PATTERN.match(p.name))
    for p in complete[:-keep_last] if keep_last else []:
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
    for p in Path(root).glob('*.old'):          # a crash between the two renames: put the old one back
        final = p.with_name(p.name[:-len('.old')])
        if final.exists():
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.replace(p, final)
    for p in Path(root).glob('*.tmp'):
        shutil.rmtree(p, ignore_errors=True)   # debris of an interrupted write


def find_latest(run_dir):
    root = Path(run_dir) / 'checkpoints'
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.iterdir() if PATTERN.match(p.name) and (p / 'state' / 'progress.json').is_file())
    return complete[-1] if complete else None
