"""Write pickles in NVlabs/edm's persistence format (test helper).

EDM pickles a snapshot dict {'ema': net, 'loss_fn': ..., 'augment_pipe': ..., 'dataset_kwargs': EasyDict}.
Every EDM layer class is a "persistent class": it pickles as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = {type: 'class', version: 6,
module_src: <the module's source code>, class_name, state: <the object's __dict__>}, where the state
holds `_init_args`/`_init_kwargs` besides the usual nn.Module fields. Torch containers (ModuleDict),
tensors and parameters pickle the ordinary way. This writer produces exactly that opcode stream
from our modules (whose names match EDM's), with fake `torch_utils` and `dnnlib` modules standing in
for EDM's during the dump.
"""

import contextlib
import pickle
import sys
import types

import numpy as np

EDM_PERSISTENT = {'EDMPrecond', 'VPPrecond', 'VEPrecond', 'SongUNet', 'DhariwalUNet', 'UNetBlock', 'Linear', 'Conv2d',
                  'GroupNorm', 'PositionalEmbedding', 'FourierEmbedding', 'EDMLoss', 'AugmentPipe'}


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
    def __init__(self, file, top, top_init_kwargs, module_src):
        super().__init__(file, protocol=4)
        self.top, self.top_init_kwargs, self.module_src = top, top_init_kwargs, module_src

    def reducer_override(self, obj):
        name = type(obj).__name__
        if name not in EDM_PERSISTENT or isinstance(obj, type):
            return NotImplemented
        # EDM's modules have no compute_dtype/text_dim (ours only): leave them out, as an EDM pickle would.
        state = {k: v for k, v in obj.__dict__.items() if k not in ('compute_dtype', 'text_dim')}
        state['_init_args'] = ()
        # EDM records numpy scalars among the blocks' kwargs (e.g. skip_scale=np.sqrt(0.5)); so do we.
        state['_init_kwargs'] = self.top_init_kwargs if obj is self.top else {'skip_scale': np.sqrt(0.5)}
        meta = dict(type='class', version=6, module_src=self.module_src, class_name=name, state=state)
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


def write_edm_pickle(path, net, spec, module_src='# EDM module source would be here; a safe loader never runs it\n',
                     top=None, class_name_override=None):
    data = dict(ema=net, loss_fn=EDMLoss(), augment_pipe=None,
                dataset_kwargs=EasyDict(class_name='training.dataset.ImageFolderDataset', path='cifar10.zip'))
    if top is not None:
        data = top
    with _fake_edm_modules(), open(path, 'wb') as f:
        pickler = EDMPickler(f, net, edm_init_kwargs(spec), module_src)
        if class_name_override:
            original = pickler.reducer_override

            def override(obj):
                result = original(obj)
                if result is not NotImplemented and obj is net:
                    result[1][0]['class_name'] = class_name_override
                return result
            pickler.reducer_override = override
        pickler.dump(data)
