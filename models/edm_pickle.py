"""Load official EDM / SiD network pickles without executing anything they carry.

EDM pickles (`torch_utils.persistence`) embed the source code of their classes and `exec` it on
load. We never do: a restricted unpickler resolves only a short list of known globals, turns every
persistent object into an inert record (class name + state), and we rebuild *our* classes from the
top-level object's recorded constructor kwargs, then copy its parameters and buffers key for key.
Any other global (os.system, eval, an unknown class, ...) is refused before it can be called.

Snapshots written by the SiDA authors' code hold the same kind of network under other class names:
`EDMPrecond_EncoderDecoder` around `SongUNet_EncoderDecoder` or `DhariwalUNet_EncoderDecoder` (their
`sida_training/sida_networks.py`). Those classes have EDM's constructor kwargs and parameter names; what
they add is a `return_flag` argument of `forward` (decoder / encoder / encoder_decoder), which is our
`output=` ('denoised' / 'bottleneck' / 'both'). They are rebuilt as our EDMPrecond + SongUNet / DhariwalUNet.
"""

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from models.architecture import build_denoiser

# Classes that may appear as persistent objects in EDM / SiD / SiDA pickles, by the module that defines
# them. EDM's persistence format names a class only by its bare name (next to its module's source text,
# which we never run), so the name is what is checked; the module is listed for the reader.
PERSISTENT_CLASSES = {
    'training.networks': ('EDMPrecond', 'VPPrecond', 'VEPrecond', 'SongUNet', 'DhariwalUNet', 'UNetBlock', 'Linear',
                          'Conv2d', 'GroupNorm', 'PositionalEmbedding', 'FourierEmbedding'),
    'training.loss': ('EDMLoss', 'VPLoss', 'VELoss'),
    'training.augment': ('AugmentPipe',),
    'sida_training.sida_networks': ('EDMPrecond_EncoderDecoder', 'SongUNet_EncoderDecoder', 'DhariwalUNet_EncoderDecoder'),
}
KNOWN_PERSISTENT = {name for names in PERSISTENT_CLASSES.values() for name in names}
# SiDA's classes -> ours: same constructor kwargs and state-dict keys (see the module docstring).
SIDA_PRECONDS = {'EDMPrecond_EncoderDecoder': 'EDMPrecond'}
SIDA_NETWORKS = {'SongUNet_EncoderDecoder': 'SongUNet', 'DhariwalUNet_EncoderDecoder': 'DhariwalUNet'}
REBUILDABLE = {'EDMPrecond', 'VPPrecond', 'VEPrecond', *SIDA_PRECONDS}
DEFAULT_MODEL_TYPE = {'EDMPrecond': 'DhariwalUNet', 'VPPrecond': 'SongUNet', 'VEPrecond': 'SongUNet',
                      'EDMPrecond_EncoderDecoder': 'SongUNet_EncoderDecoder'}
PRECOND_PARAMS = {
    'EDMPrecond': ('sigma_min', 'sigma_max', 'sigma_data'),
    'VPPrecond': ('beta_d', 'beta_min', 'M', 'epsilon_t'),
    'VEPrecond': ('sigma_min', 'sigma_max'),
}
PRECOND_POSITIONAL = ('img_resolution', 'img_channels', 'label_dim', 'use_fp16')


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something outside the allow-list; nothing was executed."""


class Record:
    """An inert stand-in for an object in the pickle: its class name and its state."""

    class_name = None
    state = None

    def __init__(self, class_name, state=None):
        self.class_name = class_name
        self.state = state

    def __setstate__(self, state):   # BUILD opcode for plain (non-persistent) torch containers
        self.state = state

    def __repr__(self):
        return f'Record({self.class_name})'


def _record_class(qualified_name):
    """A Record subclass standing in for a plain torch container class (rebuilt via NEWOBJ + BUILD)."""
    return type('Record', (Record,), {'class_name': qualified_name, '__init__': lambda self, *a, **k: None})


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get('type') != 'class':
        raise UnsafePickleError('persistent object with unexpected metadata')
    name = meta.get('class_name')
    if name not in KNOWN_PERSISTENT:
        raise UnsafePickleError(f'refusing persistent class {name!r}: not one of the known EDM / SiD / SiDA network classes')
    return Record(name, dict(meta.get('state') or {}))


def _load_storage_bytes(data):
    # torch's own loader in weights-only mode: plain tensors and storages, nothing callable.
    return torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
    return torch.nn.Parameter(data, requires_grad=requires_grad)


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError('numpy scalar with a non-numeric dtype')
    return np.frombuffer(data, dtype=dtype)[0]


class _EasyDict(dict):
    pass


_CONTAINERS = {f'torch.nn.modules.container.{n}' for n in ('ModuleDict', 'ModuleList', 'Sequential', 'ParameterDict', 'ParameterList')}
_CONTAINERS |= {'torch.nn.modules.dropout.Dropout', 'torch.nn.modules.activation.SiLU'}

_ALLOWED = {
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _reconstruct_persistent_obj,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _load_storage_bytes,
    ('collections', 'OrderedDict'): dict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('dnnlib.util', 'EasyDict'): _EasyDict,
    ('numpy', 'dtype'): np.dtype,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if f'{module}.{name}' in _CONTAINERS:
            return _record_class(f'{module}.{name}')
        raise UnsafePickleError(f'refusing to load global {module}.{name}: not on the allow-list of an EDM network pickle')

    def persistent_load(self, pid):
        raise UnsafePickleError('persistent ids are not used by EDM pickles')


def restricted_load(file):
    return RestrictedUnpickler(file).load()


def _collect_state(record, prefix, out):
    """Walk records the way nn.Module.state_dict does: parameters, persistent buffers, submodules."""
    state = record.state or {}
    for key in ('_parameters', '_buffers'):
        skip = state.get('_non_persistent_buffers_set', set()) if key == '_buffers' else set()
        for name, tensor in (state.get(key) or {}).items():
            if tensor is not None and name not in skip:
                out[prefix + name] = tensor.detach()
    for name, child in (state.get('_modules') or {}).items():
        if child is not None:
            _collect_state(child, f'{prefix}{name}.', out)
    return out


def edm_spec_from_init(class_name, init_args, init_kwargs):
    """EDM's flat constructor kwargs (EDMPrecond(img_resolution, ..., model_type, **model_kwargs)) -> our spec.

    SiDA's EDMPrecond_EncoderDecoder takes the same kwargs; it and its model types map to our classes.
    """
    kwargs = dict(zip(PRECOND_POSITIONAL, init_args))
    kwargs.update(init_kwargs)
    kwargs.pop('use_fp16', None)  # precision is chosen at run time (autocast), not stored
    network = kwargs.pop('model_type', DEFAULT_MODEL_TYPE[class_name])
    network = SIDA_NETWORKS.get(network, network)
    precond = SIDA_PRECONDS.get(class_name, class_name)
    precond_kwargs = {k: kwargs.pop(k) for k in PRECOND_PARAMS[precond] if k in kwargs}
    resolution, channels = kwargs.pop('img_resolution'), kwargs.pop('img_channels')
    network_kwargs = dict(img_resolution=resolution, in_channels=channels, out_channels=channels,
                          label_dim=kwargs.pop('label_dim', 0), **kwargs)
    for kwargs in (precond_kwargs, network_kwargs):   # numpy scalars and tuples -> JSON-friendly values
        for key, value in kwargs.items():
            if isinstance(value, np.generic):
                kwargs[key] = value.item()
            elif isinstance(value, tuple):
                kwargs[key] = list(value)
    return {'precond': precond, 'precond_kwargs': precond_kwargs, 'network': network, 'network_kwargs': network_kwargs}


def load_edm_pickle(path, key='ema'):
    """Load the denoiser from an EDM / SiD / SiDA network pickle; returns (denoiser, architecture spec).

    The pickle's top level is EDM's snapshot dict ({'ema': net, 'loss_fn': ..., ...}), SiD's and SiDA's
    ({'ema': net}) or a network. A SiDA network comes back as our EDMPrecond + SongUNet / DhariwalUNet.
    """
    path = Path(path)
    with open(path, 'rb') as f:
        try:
            data = restricted_load(f)
        except UnsafePickleError as e:
            raise UnsafePickleError(f'{path}: {e}') from None
    net = data.get(key) if isinstance(data, dict) else data
    if not isinstance(net, Record):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f'{path}: no network under {key!r}; top-level keys: {found}')
    if net.class_name not in REBUILDABLE:
        raise ValueError(f'{path}: {key!r} is a {net.class_name}; expected one of {sorted(REBUILDABLE)}')
    spec = edm_spec_from_init(net.class_name, net.state.get('_init_args') or (), net.state.get('_init_kwargs') or {})
    denoiser = build_denoiser(spec)
    state = _collect_state(net, '', {})
    result = denoiser.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f'{path}: weights do not match {spec["network"]}: missing {result.missing_keys[:5]}, '
                         f'unexpected {result.unexpected_keys[:5]}')
    return denoiser.eval().requires_grad_(False), spec
