"""One of `sida serve --workers N`'s processes: the same app, its models loaded and warmed in this process.

Why processes: one Python process serving a small, fast model is bound by the GIL, not the GPU (per request about
2 ms of event loop and backend-thread Python; py-spy on the H200, 2026-12-04: ~250 requests/s). uvicorn's supervisor
binds the port once and starts N of these; the kernel spreads connections between them, each has its own batcher
and CUDA context on the same GPU, and a worker accepts connections only once its models are ready (compile: the
smallest bucket warm; a later worker waits for the first to warm every bucket, then loads them from the cache). The
parent hands the resolved settings over in an environment variable; /metrics adds up every worker's counters
(Prometheus' multiprocess mode).

With `--devices`, each worker first takes a slot (a file lock in a directory the parent made) and with it its share
of the devices, pinned through CUDA_VISIBLE_DEVICES before anything starts CUDA (serve/devices.py): `--workers 8
--devices all` on eight GPUs is one process per GPU.
"""

import os
import sys

SETTINGS_ENV = 'SIDA_WORKER_SETTINGS'
SLOTS_ENV = 'SIDA_WORKER_SLOTS'
SWITCH_INTERVAL_S = 0.0005   # see serve.cli: the backend thread must not wait 5 ms for the GIL behind the event loop
_slot = None                 # held for the life of the process (its lock is the slot)


def app():
    """uvicorn's factory (`serve.worker:app`) in each worker process."""
    global _slot
    import logging
    logging.basicConfig(level=logging.INFO, format='%(message)s')      # each worker's events (ready, warm), as in one process
    from serve.devices import VISIBLE, WorkerSlot, pinned, worker_share
    from serve.settings import Settings
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    devices = None
    if settings.devices:
        _slot = WorkerSlot(os.environ[SLOTS_ENV], settings.workers)
        share = worker_share(settings.devices, settings.workers, _slot.index)
        visible, local = pinned(share)
        if visible is not None:
            os.environ[VISIBLE] = visible
        devices = list(zip(share, local))
    from serve.app import create_app
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return create_app(settings, devices=devices)
