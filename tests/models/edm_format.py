"""Write pickles in NVlabs/edm's persistence format (test helper).

EDM pickles a snapshot dict {'ema': net, 'loss_fn': ..., 'augment_pipe': ..., 'dataset_kwargs': EasyDict}.
Every EDM layer class is a "persistent class": it pickles as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = {type: 'class', version: 6,
module_src: <the module's source code>, class_name, state: <the object's __dict__>}, where the state
holds `_init_args`/`_init_kwargs` besides the usual nn.Module fields. Torch containers (ModuleDict),
tensors and parameters pickle the ordinary way. This writer produces exactly that opcode stream
from our modules (whose names match EDM's), with fake `torch_utils` and `dnnlib` modules standing in
for EDM's during the dump.

The SiDA authors' code (mingyuanzhou/SiD, branch `sida`) writes the same persistence format: its snapshot
is {'ema': net} only, and the network is `EDMPrecond_EncoderDecoder` (sida_training/sida_networks.py)
around `SongUNet_EncoderDecoder` or `DhariwalUNet_EncoderDecoder`, recorded with EDM's kwargs and
model_type naming the *_EncoderDecoder network; the layers inside are EDM's own (training.networks).
`write_sida_pickle` writes that, renaming our classes as it goes.
"""

import contextlib
import pickle
import sys
import types

import numpy as np

EDM_PERSISTENT = {'EDMPrecond', 'VPPrecond', 'VEPrecond', 'SongUNet', 'DhariwalUNet', 'UNetBlock', 'Linear', 'Conv2d',
                  'GroupNorm', 'PositionalEmbedding', 'FourierEmbedding', 'EDMLoss', 'AugmentPipe'}
# Our class -> the class SiDA's code pickles in its place (everything else keeps EDM's name).
SIDA_NAMES = {'EDMPrecond': 'EDMPrecond_EncoderDecoder', 'SongUNet': 'SongUNet_EncoderDecoder',
              'DhariwalUNet': 'DhariwalUNet_EncoderDecoder'}


def _reconstruct_persistent_obj(meta):
    raise AssertionError('only used as a name while writing')


class EasyDict(dict):
    pass


class EDMLoss:
    def __init__(self):
        self.P_mean, self.P_std, self.sigma_data = -1.2, 1.2, 0.5


@contextlib.contextmanager
def _fake_edm_modules():
    persistence = types.ModuleType('torch_utils.persistence')
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType('dnnlib.util')
    util.EasyDict = EasyDict
    saved = {name: sys.modules.get(name) for name in ('torch_utils', 'torch_utils.persistence', 'dnnlib', 'dnnlib.util')}
    originals = (_reconstruct_persistent_obj.__module__, EasyDict.__module__)
    _reconstruct_persistent_obj.__module__, EasyDict.__module__ = 'torch_utils.persistence', 'dnnlib.util'
    sys.modules.update({'torch_utils': types.ModuleType('torch_utils'), 'torch_utils.persistence': persistence,
                        'dnnlib': types.ModuleType('dnnlib'), 'dnnlib.util': util})
    try:
        yield
    finally:
        _reconstruct_persistent_obj.__module__, EasyDict.__module__ = originals
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class EDMPickler(pickle.Pickler):
    def __init__(self, file, top, top_init_kwargs, module_src, class_names=None):
        super().__init__(file, protocol=4)
        self.top, self.top_init_kwargs, self.module_src = top, top_init_kwargs, module_src
        self.class_names = class_names or {}

    def reducer_override(self, obj):
        name = type(obj).__name__
        if name not in EDM_PERSISTENT or isinstance(obj, type):
            return NotImplemented
        # EDM's modules have no compute_dtype/text_dim (ours only): leave them out, as an EDM pickle would.
        state = {k: v for k, v in obj.__dict__.items() if k not in ('compute_dtype', 'text_dim')}
        state['_init_args'] = ()
        # EDM records numpy scalars among the blocks' kwargs (e.g. skip_scale=np.sqrt(0.5)); so do we.
        state['_init_kwargs'] = self.top_init_kwargs if obj is self.top else {'skip_scale': np.sqrt(0.5)}
        if obj is self.top:   # the attributes EDM's (and SiDA's) preconditioning classes set besides ours
            kw = self.top_init_kwargs
            state.update(img_resolution=kw['img_resolution'], img_channels=kw['img_channels'], use_fp16=kw['use_fp16'])
        name = self.class_names.get(name, name)
        src = self.module_src.get(name, self.module_src.get(None)) if isinstance(self.module_src, dict) else self.module_src
        meta = dict(type='class', version=6, module_src=src, class_name=name, state=state)
        return _reconstruct_persistent_obj, (meta,)


def edm_init_kwargs(spec):
    """Our spec -> the flat kwargs EDM's EDMPrecond/VPPrecond/VEPrecond constructor records."""
    kw = dict(spec['network_kwargs'])
    out = dict(img_resolution=kw.pop('img_resolution'), img_channels=kw.pop('in_channels'),
               label_dim=kw.pop('label_dim', 0), use_fp16=False, model_type=spec['network'])
    kw.pop('out_channels')
    kw.pop('text_dim', None)
    out.update({k: np.float64(v) for k, v in spec.get('precond_kwargs', {}).items()})
    out.update(kw)
    return out


def sida_init_kwargs(spec):
    """Our spec -> what SiDA's EDMPrecond_EncoderDecoder records: its training script passes the network
    kwargs (model_type naming the *_EncoderDecoder network, use_fp16, dropout, ...) and then the data
    set's img_resolution/img_channels/label_dim, all as keywords; sigma_data etc. keep their defaults."""
    kw = {k: v for k, v in edm_init_kwargs(spec).items() if k not in spec.get('precond_kwargs', {})}
    out = {k: v for k, v in kw.items() if k not in ('img_resolution', 'img_channels', 'label_dim')}
    out['model_type'] = SIDA_NAMES[spec['network']]
    out.update(img_resolution=kw['img_resolution'], img_channels=kw['img_channels'], label_dim=kw['label_dim'])
    return out


def _write(path, data, net, init_kwargs, module_src, class_names, class_name_override):
    with _fake_edm_modules(), open(path, 'wb') as f:
        pickler = EDMPickler(f, net, init_kwargs, module_src, class_names)
        if class_name_override:
            original = pickler.reducer_override

            def override(obj):
                result = original(obj)
                if result is not NotImplemented and obj is net:
                    result[1][0]['class_name'] = class_name_override
                return result
            pickler.reducer_override = override
        pickler.dump(data)


def write_edm_pickle(path, net, spec, module_src='# EDM module source would be here; a safe loader never runs it\n',
                     top=None, class_name_override=None):
    data = dict(ema=net, loss_fn=EDMLoss(), augment_pipe=None,
                dataset_kwargs=EasyDict(class_name='training.dataset.ImageFolderDataset', path='cifar10.zip'))
    if top is not None:
        data = top
    _write(path, data, net, edm_init_kwargs(spec), module_src, None, class_name_override)


def write_sida_pickle(path, net, spec, module_src=None, class_name_override=None):
    """A SiDA network snapshot (network-snapshot-<alpha>-<kimg>.pkl): {'ema': EDMPrecond_EncoderDecoder}.

    `net` is our EDMPrecond around a SongUNet or DhariwalUNet. module_src: one text for every class, or
    {class name or None (the rest): text}; by default the SiDA classes and EDM's layers get different placeholders.
    """
    if spec['precond'] != 'EDMPrecond':
        raise ValueError("SiDA's code only has EDMPrecond_EncoderDecoder")
    if module_src is None:
        module_src = {None: '# training/networks.py would be here\n',
                      **{name: '# sida_training/sida_networks.py would be here\n' for name in SIDA_NAMES.values()}}
    _write(path, dict(ema=net), net, sida_init_kwargs(spec), module_src, SIDA_NAMES, class_name_override)
