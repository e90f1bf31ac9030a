"""Served models: a bundle, its backend, its micro-batcher, and the per-model condition handling."""

import asyncio
import copy
import dataclasses
import secrets
import time
from collections import OrderedDict
from pathlib import Path

from models.bundle import CONFIG_FILE, load_bundle, require_one_step
from models.seeds import noise_for_seeds, slerp
from serve.backends import Backend, make_backend
from serve.batcher import MicroBatcher
from serve.conditions import RequestError, check_condition, condition_metadata, resolve_class, seeded_inputs


class PromptEncoder:
    """Text embeddings for prompts: an LRU cache, and cache misses of concurrent requests encoded together in
    one encoder call (collected for `max_delay_ms`), off the event loop."""

    def __init__(self, encoder, size=1024, max_delay_ms=2.0):
        self.encoder, self.size, self.delay = encoder, size, max_delay_ms / 1000
        self.cache, self.pending, self._scheduled = OrderedDict(), {}, False
        self.calls, self.encoded = 0, 0

    async def embed(self, prompt):
        if prompt in self.cache:
            self.cache.move_to_end(prompt)
            return self.cache[prompt]
        if prompt not in self.pending:
            self.pending[prompt] = asyncio.get_running_loop().create_future()
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_later(self.delay, lambda: asyncio.ensure_future(self._encode_pending()))
        return await asyncio.shield(self.pending[prompt])

    async def _encode_pending(self):
        batch, self.pending, self._scheduled = self.pending, {}, False
        prompts = list(batch)
        encode = lambda prompts: asyncio.get_running_loop().run_in_executor(None, self.encoder.encode, prompts)  # noqa: E731
        try:
            results = list(zip(prompts, await encode(prompts)))
            self.calls += 1
        except Exception as e:
            if len(prompts) == 1:
                batch[prompts[0]].set_exception(e)
                return
            # One prompt the encoder rejects must not fail its batch-mates: encode each alone, so only it fails.
            results = []
            for prompt in prompts:
                try:
                    results.append((prompt, (await encode([prompt]))[0]))
                    self.calls += 1
                except Exception as error:
                    batch[prompt].set_exception(error)
        self.encoded += len(results)
        for prompt, embedding in results:
            self.cache[prompt] = embedding
            batch[prompt].set_result(embedding)
        while len(self.cache) > self.size:
            self.cache.popitem(last=False)

    def embed_now(self, prompt):
        """Synchronous path (warm-up, tools): encode one prompt, through the cache."""
        if prompt not in self.cache:
            self.cache[prompt] = self.encoder.encode([prompt])[0]
        return self.cache[prompt]


@dataclasses.dataclass
class Replica:
    """One copy of a model on one device: its backend and the batcher that feeds it (its own thread)."""
    device: str                 # as /metrics and /v1/models name it: the physical device, e.g. cuda:3
    backend: Backend
    batcher: MicroBatcher
    warm_error: str | None = None   # why its warm-up failed (it then never serves)

    def finish_estimate(self, size, fallback_rate=None):
        """(busy, seconds until `size` more images would be done here, images ahead). An idle replica comes first: a
        rate measured on small batches says little about the next one. A replica that has not run a batch yet is
        taken to drain at fallback_rate (the others' mean); with no rate known at all, images ahead decide."""
        ahead = self.batcher.queued_images + self.batcher.running_images
        rate = self.batcher.drain.images_per_s or fallback_rate
        return ahead > 0, ((ahead + size) / rate if rate else 0.0), ahead


class ServedModel:
    """devices: [(name in metrics, device as this process names it)], one replica each; None: one replica on the
    backend's own choice of device."""

    def __init__(self, bundle_dir, settings, on_batch=None, devices=None):
        started = time.perf_counter()
        self.bundle = load_bundle(bundle_dir)
        require_one_step(self.bundle.config, bundle_dir)
        self.created = int((Path(bundle_dir) / CONFIG_FILE).stat().st_mtime)
        self.config = self.bundle.config
        self.id = self.config.name
        devices = devices or [(None, None)]
        # Copies made before any backend exists: backends move, cast and fuse their generator in place.
        bundles = [self.bundle] + [copy.deepcopy(self.bundle) for _ in devices[1:]]
        self.replicas, self.serving = [], []        # serving: the replicas requests go to, each once warm (serve.state)
        for bundle, (label, device) in zip(bundles, devices):
            backend = make_backend(settings.backend, bundle, settings.triton_url, device=device,
                                   compile_mode=settings.compile_mode, max_batch=settings.max_batch)
            label = label or backend.device
            report = ((lambda n, s, name=backend.name, label=label: on_batch(self.id, name, label, n, s))
                      if on_batch else None)
            self.replicas.append(Replica(label, backend, MicroBatcher(backend, settings.max_batch, settings.max_delay_ms,
                                                                        settings.max_queue_images, on_batch=report,
                                                                        depth=settings.pipeline_depth)))
        self.prompts = None
        if self.config.condition['kind'] == 'text':
            from models.text_encoder import bundle_text_encoder
            self.prompts = PromptEncoder(bundle_text_encoder(self.config))
        self.load_seconds = round(time.perf_counter() - started, 3)     # bundle checked and built, backends set up

    @property
    def backend(self):
        """The first replica's backend: every replica runs the same kind (name, precision) on its own device."""
        return self.replicas[0].backend

    def serve_on(self, replica):
        """Start the replica's batcher and send requests to it from now on."""
        replica.batcher.start()
        self.serving.append(replica)

    def replica_for(self, size):
        """The healthy serving replica that would finish `size` more images first (none healthy: the same rule over
        all of them, so the request still reaches one and its failure is reported)."""
        healthy = [r for r in self.serving if r.batcher.healthy] or self.serving
        rates = [r.batcher.drain.images_per_s for r in healthy if r.batcher.drain.images_per_s]
        fallback = sum(rates) / len(rates) if rates else None
        return min(healthy, key=lambda r: r.finish_estimate(size, fallback))

    @property
    def healthy(self):
        """Serving somewhere: a replica that failed leaves its model up on the others (/readyz lists each)."""
        return any(r.batcher.healthy for r in self.serving)

    @property
    def kind(self):
        return self.config.condition['kind']

    def check_request(self, n, seed=None, class_label=None, class_name=None, prompt=None, seed_b=None):
        """What makes a request bad whatever the server's load (RequestError): the condition it gives, its seeds'
        range, its class. Cheap: checked before admission, so a bad request gets its 4xx, not a 429 to retry.
        Returns the fixed class (class models) or None."""
        check_condition(self.kind, self.id, class_label is not None or class_name is not None, prompt)
        for first, name in ((seed, 'seed'), (seed_b, 'seed_b')):
            if first is not None and first + n - 1 > 2 ** 63 - 1:
                raise RequestError(f'{name} + n - 1 exceeds the largest seed (2^63 - 1)', param=name)
        return resolve_class(self.config, self.id, class_label, class_name) if self.kind == 'class' else None

    def build_inputs(self, n, seed=None, fixed_class=None, prompt=None, text_embedding=None, seed_b=None, mix=None):
        """Contract inputs for n images of a request check_request passed (fixed_class: what it returned), plus what
        each image was: (inputs, seeds, per-image metadata). Text models take the prompt's embedding from
        `PromptEncoder.embed` (async); without it, it is encoded here. seed_b and mix: a seed walk, image i's noise
        slerped from seed + i's towards seed_b + i's."""
        first = seed if seed is not None else secrets.randbelow(2 ** 62)
        seeds = [first + i for i in range(n)]
        seeds_b = [seed_b + i for i in range(n)] if seed_b is not None else []
        embedding = None
        if self.kind == 'text':
            embedding = text_embedding if text_embedding is not None else self.prompts.embed_now(prompt)
        inputs, names = seeded_inputs(self.config, seeds, fixed_class, embedding)
        if seeds_b:
            c = self.config
            inputs['noise'] = slerp(inputs['noise'], noise_for_seeds(seeds_b, (c.channels, c.resolution, c.resolution)), mix)
        meta = [condition_metadata(name, prompt if self.kind == 'text' else None, b, mix if seeds_b else None)
                for name, b in zip(names, seeds_b or [None] * n)]
        return inputs, seeds, meta

    def info(self):
        c = self.config
        described = self.backend.describe()
        return {'id': self.id, 'object': 'model', 'created': self.created, 'owned_by': 'sida', 'resolution': c.image_resolution,
                'condition': {'kind': self.kind, 'labels': c.label_names},
                **{k: v for k, v in described.items() if k in ('backend', 'precision', 'warm')},
                'device': self.replicas[0].device,     # as named outside this process (a worker sees its GPUs as cuda:0..)
                'devices': [r.device for r in self.replicas], 'serving_on': [r.device for r in self.serving]}
