"""What a model is conditioned on, checked one way for the API and `sida generate`, and the metadata keys an image carries."""


ECHO_MAX = 80     # characters of a client's input that an error message repeats


def quoted(text, limit=ECHO_MAX):
    """repr() of a client's input for an error message, cut to `limit` characters with an ellipsis: a 60 KB prompt
    is not sent back, nor written to the log, in full."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + '…'


class RequestError(ValueError):
    """A request this model cannot serve as asked (unknown class, missing prompt, ...): HTTP 400/404."""

    def __init__(self, message, status=400, code='invalid_request', param=None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param      # param: the request field at fault


class ConditionError(RequestError):
    """A condition this model cannot take (unknown class, a prompt for a class model, ...); the message says why."""


def resolve_class(config, model_id, class_label=None, class_name=None):
    """A class index from an index or a name (case-insensitive); None when neither is given."""
    labels = config.label_names
    if class_name is not None:
        lowered = [x.lower() for x in labels]
        if class_name.strip().lower() not in lowered:
            raise ConditionError(f'unknown class {quoted(class_name)} for model {model_id}; known: {", ".join(labels)}',
                                 param='class_name')
        return lowered.index(class_name.strip().lower())
    if class_label is not None and not 0 <= class_label < len(labels):
        raise ConditionError(f'class_label {class_label} out of range for model {model_id} (0..{len(labels) - 1})',
                             param='class_label')
    return class_label


def check_condition(kind, model_id, has_class=False, prompt=None):
    """Refuse a condition the model kind does not take, and a text model without a prompt."""
    if kind != 'class' and has_class:
        raise ConditionError(f'model {model_id} is {kind}-conditioned: it takes no class')
    if kind != 'text' and prompt is not None:
        raise ConditionError(f'model {model_id} is {kind}-conditioned: it takes no prompt', param='prompt')
    if kind == 'text' and not (prompt or '').strip():
        raise ConditionError(f'model {model_id} is text-conditioned: give a prompt', param='prompt')


def condition_metadata(class_name=None, prompt=None, seed_b=None, mix=None):
    """The per-image condition keys of the API's answer (and of PNG text chunks)."""
    meta = {}
    if class_name is not None:
        meta['class_name'] = class_name
    if prompt is not None:
        meta['prompt'] = prompt
    if seed_b is not None:
        meta.update(seed_b=seed_b, mix=mix)
    return meta


def image_metadata(model, seed, **condition):
    """Everything a generated image carries: model id, seed and its condition, with the API's keys."""
    return {'model': model, 'seed': seed, **condition_metadata(**condition)}


def seeded_inputs(config, seeds, fixed_class=None, text_embedding=None):
    """The contract's inputs for one image per seed, the same on every path (API, `sida generate`, any backend):
    each seed's noise, and the condition: `fixed_class`, or a class drawn from each seed (class models), or the
    prompt's [tokens, dim] embedding for every image (text models). Returns (inputs, each image's class name or None)."""
    import torch

    from models.seeds import labels_for_seeds, noise_for_seeds
    n, c = len(seeds), config
    inputs = {'noise': noise_for_seeds(seeds, (c.channels, c.resolution, c.resolution))}
    names = [None] * n
    kind = c.condition['kind']
    if kind == 'class':
        labels = (torch.full((n,), fixed_class, dtype=torch.int64) if fixed_class is not None
                  else labels_for_seeds(seeds, len(c.label_names)))
        inputs['class_labels'] = labels
        names = [c.label_names[x] for x in labels.tolist()]      # one call, not a tensor per label
    elif kind == 'text':
        inputs['text_embeds'] = text_embedding.unsqueeze(0).expand(n, -1, -1).contiguous()
    return inputs, names
