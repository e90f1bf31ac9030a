"""Inception FID weights small enough to carry, and what rounding them does to FID.

`sida bench fid-weights OUT.pt --dtype fp16` writes a copy of the TF-FID Inception TorchScript (87 MB, from the
[fid] extra) with its weight tensors rounded to fp16 or bf16 (44 MB), or `--dtype int8` quantized to int8 per
output channel (22 MB, 18.6 MB gzipped): under one 64 MiB transfer to a GPU machine, where
`sida train evaluate --fid-weights OUT.pt` (or `--metric-features inception:OUT.pt`) loads it, back in fp32.

`sida bench fid-rounding --data cifar10-jpeg.tar.gz` measures the cost: the same real images through the full and
the rounded networks (CIFAR-10 test images against training images, and the training images with added noise),
FID for each and the per-image feature error; one JSON under bench/results/<device>/.
"""

import os
import tempfile
import time
import zlib
from pathlib import Path

import torch

from train.metrics import InceptionFeatures, extract, file_digest, frechet_distance, inception_weights, save_rounded_inception, statistics


def write_rounded(out, dtype='fp16', source=None):
    """The rounded copy and its metadata; returns (path, size in bytes, metadata)."""
    meta = save_rounded_inception(out, dtype, source)
    return Path(out), os.path.getsize(out), meta


def gzip_size(path, level=6):
    """Bytes of the file gzipped by zlib at gzip's default level 6 (`gzip -c` itself comes within ~0.2%: 18.64 MB
    against 18.67 MB for the int8 Inception copy)."""
    z, size = zlib.compressobj(level, zlib.DEFLATED, 31), 0
    with open(path, 'rb') as f:
        while block := f.read(1 << 20):
            size += len(z.compress(block))
    return size + len(z.flush())


def _images(data, prefix, n):
    from train.data import ImageDataset
    return ImageDataset(data, prefix=prefix, max_images=n).load_all(progress=False)


def noisy(images, sigma, seed=0):
    """Images plus Gaussian noise of `sigma` grey levels, rounded and clipped back to uint8 (a clearly worse set)."""
    g = torch.Generator().manual_seed(seed)
    return (images.float() + sigma * torch.randn(images.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def measure_rounding(data, n=300, dtypes=('fp16', 'bf16', 'int8'), noise=16.0, source=None, log=print):
    """FIDs of the same image sets through fp32 and rounded weights. Returns (settings, rows)."""
    source = Path(source) if source is not None else inception_weights()
    sets = {'test': _images(data, 'test', n), 'train': _images(data, 'train', n)}
    sets['train+noise'] = noisy(sets['train'], noise)
    rows, full = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for weights in ('fp32', *dtypes):
            path = source if weights == 'fp32' else write_rounded(Path(tmp) / f'inception-{weights}.pt', weights, source)[0]
            features = InceptionFeatures(path)
            start = time.perf_counter()
            feats = {name: extract(features, images) for name, images in sets.items()}
            seconds = time.perf_counter() - start
            stats = {name: statistics(f) for name, f in feats.items()}
            row = {'kind': 'fid-rounding', 'weights': weights, 'file_mb': round(os.path.getsize(path) / 1e6, 1),
                   'file_mb_gzip': round(gzip_size(path) / 1e6, 1),
                   'fid_test_vs_train': frechet_distance(*stats['test'], *stats['train']),
                   'fid_noisy_vs_train': frechet_distance(*stats['train+noise'], *stats['train']),
                   'seconds_per_image': seconds / sum(len(x) for x in sets.values())}
            if full is None:
                full = feats, row
            else:
                ref_feats, ref_row = full
                for key in ('fid_test_vs_train', 'fid_noisy_vs_train'):
                    row[f'{key}_delta'] = row[key] - ref_row[key]
                    row[f'{key}_rel_delta'] = row[key] / ref_row[key] - 1
                both = torch.cat(list(feats.values())), torch.cat(list(ref_feats.values()))
                err = (both[0] - both[1]).norm(dim=1) / both[1].norm(dim=1)
                row['feature_rel_error_mean'], row['feature_rel_error_max'] = err.mean().item(), err.max().item()
                # the same images through both networks: how far rounding alone moves the statistics
                row['fid_same_images_vs_fp32'] = frechet_distance(*statistics(both[0]), *statistics(both[1]))
            rows.append(row)
            log(f'{weights}: ' + ', '.join(f'{k} {v:.4g}' for k, v in row.items() if isinstance(v, float)))
    settings = {'data': Path(data).name, 'data_sha256_16': file_digest(data) if Path(data).is_file() else None,
                'images_per_set': n, 'sets': {k: len(v) for k, v in sets.items()}, 'noise_sigma': noise,
                'source_weights': source.name, 'compute': 'fp32 on CPU (weights upcast or dequantized at load)',
                'note': f'FID from {n} images per set is biased upwards (the 50k protocol gives far lower numbers); '
                        'the deltas between weights on the same images are what this measures'}
    return settings, rows
