"""Served models: a bundle, its backend, its micro-batcher, and the per-model condition handling."""

import secrets
from collections import OrderedDict

import torch

from models.bundle import load_bundle
from models.sampling import noise_for_seeds
from serve.backends import make_backend
from serve.batcher import MicroBatcher


class RequestError(ValueError):
    """A request this model cannot serve as asked (unknown class, missing prompt, ...): HTTP 400/404."""

    def __init__(self, message, status=400, code='invalid_request'):
        super().__init__(message)
        self.status, self.code = status, code


class PromptCache:
    """LRU cache of text embeddings: the encoder runs once per distinct prompt."""

    def __init__(self, encoder, size=1024):
        self.encoder, self.size, self.items = encoder, size, OrderedDict()

    def get(self, prompt):
        if prompt in self.items:
            self.items.move_to_end(prompt)
            return self.items[prompt]
        embedding = self.encoder.encode([prompt])[0]
        self.items[prompt] = embedding
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return embedding


class ServedModel:
    def __init__(self, bundle_dir, settings, on_batch=None):
        self.bundle = load_bundle(bundle_dir)
        self.config = self.bundle.config
        self.id = self.config.name
        self.backend = make_backend(settings.backend, self.bundle, settings.triton_url)
        self.batcher = MicroBatcher(self.backend, settings.max_batch, settings.max_delay_ms, settings.max_queue_images,
                                    on_batch=(lambda n, s: on_batch(self.id, self.backend.name, n, s)) if on_batch else None)
        self.prompts = None
        if self.config.condition['kind'] == 'text':
            from models.text_encoder import get_text_encoder
            c = self.config.condition
            self.prompts = PromptCache(get_text_encoder(c['encoder'], c['max_tokens']))

    @property
    def kind(self):
        return self.config.condition['kind']

    def resolve_class(self, class_label=None, class_name=None):
        labels = self.config.label_names
        if class_name is not None:
            lowered = [x.lower() for x in labels]
            if class_name.strip().lower() not in lowered:
                raise RequestError(f'unknown class {class_name!r} for model {self.id}; known: {", ".join(labels)}')
            return lowered.index(class_name.strip().lower())
        if class_label is not None and class_label >= len(labels):
            raise RequestError(f'class_label {class_label} out of range for model {self.id} (0..{len(labels) - 1})')
        return class_label

    def build_inputs(self, n, seed=None, class_label=None, class_name=None, prompt=None):
        """Contract inputs for n images, plus what each image was: (inputs, seeds, per-image metadata)."""
        if self.kind != 'class' and (class_label is not None or class_name is not None):
            raise RequestError(f'model {self.id} is {self.kind}-conditioned: it takes no class')
        if self.kind != 'text' and prompt is not None:
            raise RequestError(f'model {self.id} is {self.kind}-conditioned: it takes no prompt')
        if self.kind == 'text' and not (prompt or '').strip():
            raise RequestError(f'model {self.id} is text-conditioned: give a prompt')
        first = seed if seed is not None else secrets.randbelow(2 ** 62)
        seeds = [first + i for i in range(n)]
        if seeds[-1] > 2 ** 63 - 1:
            raise RequestError('seed + n - 1 exceeds the largest seed (2^63 - 1)')
        c = self.config
        inputs = {'noise': noise_for_seeds(seeds, (c.channels, c.resolution, c.resolution))}
        meta = [{} for _ in seeds]
        if self.kind == 'class':
            fixed = self.resolve_class(class_label, class_name)
            if fixed is None:
                from models.sampling import labels_for_seeds
                labels = labels_for_seeds(seeds, len(c.label_names))
            else:
                labels = torch.full((n,), fixed, dtype=torch.int64)
            inputs['class_labels'] = labels
            meta = [{'class_name': c.label_names[int(x)]} for x in labels]
        elif self.kind == 'text':
            inputs['text_embeds'] = self.prompts.get(prompt).unsqueeze(0).expand(n, -1, -1).contiguous()
            meta = [{'prompt': prompt} for _ in seeds]
        return inputs, seeds, meta

    def info(self):
        c = self.config
        return {'id': self.id, 'resolution': c.resolution, 'condition': {'kind': self.kind, 'labels': c.label_names},
                **{k: v for k, v in self.backend.describe().items() if k in ('backend', 'device', 'precision', 'warm')}}
