"""Served models: a bundle, its backend, its micro-batcher, and the per-model condition handling."""

import asyncio
import secrets
import time
from collections import OrderedDict
from pathlib import Path

from models.bundle import CONFIG_FILE, load_bundle
from models.seeds import noise_for_seeds, slerp
from serve.backends import make_backend
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


class ServedModel:
    def __init__(self, bundle_dir, settings, on_batch=None):
        started = time.perf_counter()
        self.bundle = load_bundle(bundle_dir)
        self.created = int((Path(bundle_dir) / CONFIG_FILE).stat().st_mtime)
        self.config = self.bundle.config
        self.id = self.config.name
        self.backend = make_backend(settings.backend, self.bundle, settings.triton_url, compile_mode=settings.compile_mode,
                                    max_batch=settings.max_batch)
        self.batcher = MicroBatcher(self.backend, settings.max_batch, settings.max_delay_ms, settings.max_queue_images,
                                    on_batch=(lambda n, s: on_batch(self.id, self.backend.name, n, s)) if on_batch else None)
        self.prompts = None
        if self.config.condition['kind'] == 'text':
            from models.text_encoder import bundle_text_encoder
            self.prompts = PromptEncoder(bundle_text_encoder(self.config))
        self.load_seconds = round(time.perf_counter() - started, 3)     # bundle checked and built, backend set up

    @property
    def kind(self):
        return self.config.condition['kind']

    def build_inputs(self, n, seed=None, class_label=None, class_name=None, prompt=None, text_embedding=None, seed_b=None, mix=None):
        """Contract inputs for n images, plus what each image was: (inputs, seeds, per-image metadata).
        Text models take the prompt's embedding from `PromptEncoder.embed` (async); without it, it is encoded here.
        seed_b and mix: a seed walk, image i's noise slerped from seed + i's towards seed_b + i's."""
        check_condition(self.kind, self.id, class_label is not None or class_name is not None, prompt)   # RequestError
        first = seed if seed is not None else secrets.randbelow(2 ** 62)
        seeds = [first + i for i in range(n)]
        if seeds[-1] > 2 ** 63 - 1:
            raise RequestError('seed + n - 1 exceeds the largest seed (2^63 - 1)')
        seeds_b = [seed_b + i for i in range(n)] if seed_b is not None else []
        if seeds_b and seeds_b[-1] > 2 ** 63 - 1:
            raise RequestError('seed_b + n - 1 exceeds the largest seed (2^63 - 1)')
        fixed = resolve_class(self.config, self.id, class_label, class_name) if self.kind == 'class' else None
        embedding = None
        if self.kind == 'text':
            embedding = text_embedding if text_embedding is not None else self.prompts.embed_now(prompt)
        inputs, names = seeded_inputs(self.config, seeds, fixed, embedding)
        if seeds_b:
            c = self.config
            inputs['noise'] = slerp(inputs['noise'], noise_for_seeds(seeds_b, (c.channels, c.resolution, c.resolution)), mix)
        meta = [condition_metadata(name, prompt if self.kind == 'text' else None, b, mix if seeds_b else None)
                for name, b in zip(names, seeds_b or [None] * n)]
        return inputs, seeds, meta

    def info(self):
        c = self.config
        return {'id': self.id, 'object': 'model', 'created': self.created, 'owned_by': 'sida', 'resolution': c.image_resolution,
                'condition': {'kind': self.kind, 'labels': c.label_names},
                **{k: v for k, v in self.backend.describe().items() if k in ('backend', 'device', 'precision', 'warm')}}
