"""Explicit architecture specs: which preconditioning wraps which network, with which kwargs.

A spec is plain JSON (it lives in sida.json):
    {"precond": "EDMPrecond", "precond_kwargs": {...}, "network": "SongUNet", "network_kwargs": {...}}
`network_kwargs` carries everything the network needs (img_resolution, in/out channels, label_dim,
text_dim, ...), so a spec alone builds the denoiser. Presets give EDM's published configurations.
"""

import inspect

from models.precond import EDMPrecond, VEPrecond, VPPrecond
from models.unets import DhariwalUNet, SongUNet

NETWORKS = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet, 'UNet2DConditionModel': None}   # None: imported on use
PRECONDS = {'EDMPrecond': EDMPrecond, 'VPPrecond': VPPrecond, 'VEPrecond': VEPrecond, 'DiffusersPrecond': None}


def _network_class(name):
    if name == 'UNet2DConditionModel':          # Stable-Diffusion-style latent UNets (the [t2i] extra)
        try:
            from diffusers import UNet2DConditionModel
        except ImportError:
            raise ArchitectureError('network UNet2DConditionModel needs diffusers: pip install "sida[t2i]"') from None
        return UNet2DConditionModel
    return NETWORKS[name]


def _precond_class(name):
    if name == 'DiffusersPrecond':
        from models.diffusers_teacher import DiffusersPrecond
        return DiffusersPrecond
    return PRECONDS[name]


def geometry(spec):
    """(resolution, in_channels, out_channels, label_dim, text_dim) of the network a spec describes."""
    kw = spec['network_kwargs']
    if spec['network'] == 'UNet2DConditionModel':
        return kw.get('sample_size'), kw.get('in_channels'), kw.get('out_channels'), 0, kw.get('cross_attention_dim')
    return kw.get('img_resolution'), kw.get('in_channels'), kw.get('out_channels'), kw.get('label_dim', 0), kw.get('text_dim', 0)


class ArchitectureError(ValueError):
    """A spec names an unknown class or passes kwargs its class does not take."""


def _check_kwargs(cls, kwargs, what):
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ArchitectureError(f'{what} {cls.__name__} does not take {unknown}; it takes {sorted(p for p in params if p != "self")}')


def build_denoiser(spec):
    """Instantiate the denoiser (preconditioning around a network) that `spec` describes."""
    for key in ('precond', 'network', 'network_kwargs'):
        if key not in spec:
            raise ArchitectureError(f'architecture spec lacks {key!r}')
    if spec['network'] not in NETWORKS:
        raise ArchitectureError(f'unknown network {spec["network"]!r}; known: {sorted(NETWORKS)}')
    if spec['precond'] not in PRECONDS:
        raise ArchitectureError(f'unknown preconditioning {spec["precond"]!r}; known: {sorted(PRECONDS)}')
    net_cls, pre_cls = _network_class(spec['network']), _precond_class(spec['precond'])
    net_kwargs = dict(spec['network_kwargs'])
    pre_kwargs = dict(spec.get('precond_kwargs', {}))
    _check_kwargs(net_cls, net_kwargs, 'network')
    _check_kwargs(pre_cls, pre_kwargs, 'preconditioning')
    try:
        network = net_cls(**net_kwargs)
    except TypeError as e:
        raise ArchitectureError(f'network {spec["network"]}: {e}') from None
    return pre_cls(network, label_dim=net_kwargs.get('label_dim', 0), **pre_kwargs)


def _spec(network, precond='EDMPrecond', precond_kwargs=None, **network_kwargs):
    return {'precond': precond, 'precond_kwargs': dict(precond_kwargs or {}),
            'network': network, 'network_kwargs': network_kwargs}


def _label_dropout(p):
    # Recorded only when set: the specs (and bundles) of networks trained without it stay as they were.
    return {'label_dropout': p} if p else {}


def ddpmpp(resolution=32, channels=3, label_dim=0, model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
           attn_resolutions=(16,), dropout=0.13, augment_dim=9, text_dim=0, sigma_data=0.5, label_dropout=0):
    """EDM's DDPM++ (CIFAR-10 config by default: 55.7M parameters class-conditional)."""
    return _spec('SongUNet', precond_kwargs={'sigma_data': sigma_data},
                 img_resolution=resolution, in_channels=channels, out_channels=channels, label_dim=label_dim,
                 augment_dim=augment_dim, model_channels=model_channels, channel_mult=list(channel_mult),
                 num_blocks=num_blocks, attn_resolutions=list(attn_resolutions), dropout=dropout, text_dim=text_dim,
                 embedding_type='positional', encoder_type='standard', decoder_type='standard',
                 channel_mult_noise=1, resample_filter=[1, 1], **_label_dropout(label_dropout))


def ncsnpp(resolution=32, channels=3, label_dim=0, model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
           attn_resolutions=(16,), dropout=0.13, augment_dim=9, text_dim=0, sigma_data=0.5, label_dropout=0):
    """EDM's NCSN++ (Fourier noise embedding, residual encoder, [1,3,3,1] resampling)."""
    spec = ddpmpp(resolution, channels, label_dim, model_channels, channel_mult, num_blocks, attn_resolutions,
                  dropout, augment_dim, text_dim, sigma_data, label_dropout)
    spec['network_kwargs'].update(embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                                  channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
    return spec


def adm(resolution=64, channels=3, label_dim=1000, model_channels=192, channel_mult=(1, 2, 3, 4), num_blocks=3,
        attn_resolutions=(32, 16, 8), dropout=0.10, augment_dim=0, sigma_data=0.5, label_dropout=0):
    """EDM's ADM (ImageNet-64 config by default: 295.9M parameters)."""
    return _spec('DhariwalUNet', precond_kwargs={'sigma_data': sigma_data},
                 img_resolution=resolution, in_channels=channels, out_channels=channels, label_dim=label_dim,
                 augment_dim=augment_dim, model_channels=model_channels, channel_mult=list(channel_mult),
                 num_blocks=num_blocks, attn_resolutions=list(attn_resolutions), dropout=dropout,
                 **_label_dropout(label_dropout))


PRESETS = {'ddpmpp': ddpmpp, 'ncsnpp': ncsnpp, 'adm': adm}
