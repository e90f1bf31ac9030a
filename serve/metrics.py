"""Prometheus metrics of the HTTP API and the batchers (scraped at /metrics).

Under `sida serve --workers N` (PROMETHEUS_MULTIPROC_DIR set), every process writes its values to files there and a
scrape adds them up across processes (gauges: the sum over live ones)."""

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter('sida_requests_total', 'HTTP requests', ['route', 'status'], registry=self.registry)
        self.errors = Counter('sida_errors_total', 'Error responses by code', ['code'], registry=self.registry)
        self.latency = Histogram('sida_request_seconds', 'Request latency', ['model', 'backend'], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        # Per device: each replica (GPU) of a model has its own batcher (serve/devices.py).
        self.batch_size = Histogram('sida_batch_size', 'Images per backend call', ['model', 'backend', 'device'],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram('sida_batch_seconds', 'Backend call time', ['model', 'backend', 'device'],
                                       registry=self.registry)
        self.images = Counter('sida_images_total', 'Images generated', ['model', 'backend', 'device'], registry=self.registry)
        self.queue = Gauge('sida_queue_images', 'Images waiting', ['model', 'device'], registry=self.registry,
                           multiprocess_mode='livesum')
        self.text_calls = Gauge('sida_text_encoder_calls', 'Text-encoder calls (batched cache misses)', ['model'],
                                registry=self.registry, multiprocess_mode='livesum')
        self.text_prompts = Gauge('sida_text_prompts_encoded', 'Distinct prompts encoded', ['model'], registry=self.registry,
                                  multiprocess_mode='livesum')

    def on_batch(self, model, backend, device, n, seconds):
        self.batch_size.labels(model, backend, device).observe(n)
        self.batch_seconds.labels(model, backend, device).observe(seconds)
        self.images.labels(model, backend, device).inc(n)

    def exposition(self):
        """The text a scrape gets: this process's metrics, or all workers' added up."""
        if not os.environ.get('PROMETHEUS_MULTIPROC_DIR'):
            return generate_latest(self.registry)
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
