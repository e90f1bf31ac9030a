"""One of `sida serve --workers N`'s processes: the same app, its models loaded and warmed in this process.

Why processes: one Python process serving a small, fast model is bound by the GIL, not the GPU (per request about
2 ms of event loop and backend-thread Python; py-spy on the H200, 2026-12-04: ~250 requests/s). uvicorn's supervisor
binds the port once and starts N of these; the kernel spreads connections between them, each has its own batcher
and CUDA context on the same GPU, and a worker accepts connections only once its models are ready (compile: the
smallest bucket warm; a later worker waits for the first to warm every bucket, then loads them from the cache). The
parent hands the resolved settings over in an environment variable; /metrics adds up every worker's counters
(Prometheus' multiprocess mode).
"""

import os
import sys

SETTINGS_ENV = 'SIDA_WORKER_SETTINGS'
SWITCH_INTERVAL_S = 0.0005   # see serve.cli: the backend thread must not wait 5 ms for the GIL behind the event loop


def app():
    """uvicorn's factory (`serve.worker:app`) in each worker process."""
    from serve.app import create_app
    from serve.settings import Settings
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))
