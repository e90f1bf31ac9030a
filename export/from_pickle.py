"""A one-step generator pickled by the SiD / SiDA authors' code (EDM's pickle format) as a sida bundle.

Their generator is an EDM-preconditioned denoiser evaluated once at a fixed noise level on pure noise, which is
what a bundle holds: G(z) = D(init_sigma * z, init_sigma), init_sigma 2.5 in every SiD / SiDA recipe. The pickle
is read by the restricted unpickler (models/edm_pickle.py: no code from the file runs), the weights are copied
key for key into our classes and written as safetensors; from there every export and backend applies.
"""

from pathlib import Path

from models.bundle import save_bundle
from models.demo import CIFAR10_CLASSES
from models.edm_pickle import load_edm_pickle
from models.generator import OneStepGenerator

NAMED_LABELS = {'cifar10': CIFAR10_CLASSES}


class PickleImportError(ValueError):
    """A bad option value; `param` names the option."""

    def __init__(self, message, param):
        super().__init__(message)
        self.param = param


def class_names(labels, label_dim):
    """The condition's class names: 'cifar10', a comma-separated list, or None (the indices as names)."""
    if not label_dim:
        if labels:
            raise PickleImportError('--labels was given, but the network is unconditional (label_dim 0)', '--labels')
        return None
    if labels is None:
        names = [str(i) for i in range(label_dim)]
    else:
        names = list(NAMED_LABELS.get(labels.lower(), [n.strip() for n in labels.split(',')]))
    if len(names) != label_dim or len(set(names)) != len(names) or not all(names):
        shown = ', '.join(names[:12]) + (', ...' if len(names) > 12 else '')
        raise PickleImportError(f'the network has {label_dim} classes; --labels names {len(names)} ({shown}): '
                                f'give {label_dim} distinct names', '--labels')
    return names


def bundle_from_pickle(pickle_path, out, *, init_sigma=2.5, name=None, labels=None, key='ema', dtype='float32'):
    """Write the bundle; returns its config."""
    pickle_path = Path(pickle_path)
    if not init_sigma > 0:
        raise PickleImportError(f'--init-sigma must be positive, got {init_sigma}', '--init-sigma')
    denoiser, spec = load_edm_pickle(pickle_path, key=key)
    names = class_names(labels, spec['network_kwargs'].get('label_dim', 0))
    condition = {'kind': 'class', 'labels': names} if names else {'kind': 'none'}
    generator = OneStepGenerator(denoiser.eval(), init_sigma=init_sigma)
    provenance = {'method': 'imported', 'source': pickle_path.name, 'pickle_key': key,
                  'note': 'one-step generator from an EDM-format pickle (SiD / SiDA reference code); weights copied as is'}
    return save_bundle(out, generator, name=name or pickle_path.stem, condition=condition, provenance=provenance,
                       dtype=dtype, architecture=spec)
