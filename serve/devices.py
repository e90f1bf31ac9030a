"""Which devices a server's models run on, and which of them each `--workers` process takes.

`sida serve --devices cuda:0,cuda:1` (or `all`) gives every model one replica per device: its own backend and
batcher, and a request goes to the replica that would finish it first (served_model.ServedModel.replica_for).
Under `--workers N` the devices are dealt out to the processes: worker k takes devices k, k+N, k+2N, ... (with more
workers than devices, several workers share one). A worker sees only its own GPUs (CUDA_VISIBLE_DEVICES, set
before CUDA starts), so each compiles for `cuda:0`: the compile cache's entries, keyed by the device index among
everything else, are shared by every worker instead of compiled once per card.
"""

import fcntl
import os
from pathlib import Path

VISIBLE = 'CUDA_VISIBLE_DEVICES'


class DeviceError(ValueError):
    """A device list this machine cannot serve; the message says why and what it has."""


def resolve_devices(spec):
    """['all'] -> every CUDA device here; otherwise the names checked against this machine, as torch spells them."""
    import torch
    spec = [s.strip() for s in spec if s.strip()]
    if not spec:
        return []
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == ['all']:
        if not count:
            raise DeviceError('--devices all: this machine has no CUDA GPU (give cpu, or leave --devices out)')
        return [f'cuda:{i}' for i in range(count)]
    devices = []
    for name in spec:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DeviceError(f'unknown device {name!r}: use cpu, cuda, cuda:N or all') from None
        if device.type not in ('cpu', 'cuda'):
            raise DeviceError(f'device {name!r}: sida serves on cpu or cuda devices')
        if device.type == 'cuda':
            index = device.index or 0
            if index >= count:
                have = f'cuda:0..cuda:{count - 1}' if count else 'no CUDA GPU'
                raise DeviceError(f'device {name!r} is not on this machine ({have})')
            devices.append(f'cuda:{index}')
        else:
            devices.append(str(device))
    twice = sorted({d for d in devices if devices.count(d) > 1})
    if twice:
        raise DeviceError(f'{", ".join(twice)} listed twice: one replica per device (more processes: --workers)')
    return devices


def worker_share(devices, workers, slot):
    """The devices worker `slot` of `workers` serves on: every workers-th one from its slot, or (more workers than
    devices) one device shared with the other workers on it."""
    if not devices:
        return []
    if workers <= len(devices):
        return devices[slot::workers]
    return [devices[slot % len(devices)]]


def pinned(devices):
    """(CUDA_VISIBLE_DEVICES value or None, the devices as this process will name them once it is set). Only a
    list of distinct CUDA devices is pinned; anything with cpu in it runs as named."""
    indices = [int(d.split(':')[1]) for d in devices if d.startswith('cuda:')]
    if not devices or len(indices) != len(devices) or len(set(indices)) != len(indices):
        return None, list(devices)
    visible = os.environ.get(VISIBLE)
    physical = [visible.split(',')[i].strip() for i in indices] if visible else [str(i) for i in indices]
    return ','.join(physical), [f'cuda:{i}' for i in range(len(indices))]


class WorkerSlot:
    """A worker's number among `workers` processes, held as an exclusive lock on a file in a directory the workers
    share: the lock dies with its process, so a worker the supervisor restarts takes the slot (and devices) of the
    one that died."""

    def __init__(self, directory, workers):
        self.index, self._file = None, None
        for k in range(workers):
            f = open(Path(directory) / f'worker-slot-{k}.lock', 'w')
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            self.index, self._file = k, f
            return
        raise RuntimeError(f'all {workers} worker slots in {directory} are taken: is another server using this directory?')

    def release(self):
        if self._file is not None:
            self._file.close()
            self._file, self.index = None, None
