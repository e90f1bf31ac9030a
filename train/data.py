"""Image data sets for teachers, SiDA's real images, labels and metrics.

Sources (all give uint8 [C,H,W] images, an integer label and optionally a caption):
- a folder `<class>/<file>` (labels from sorted class-folder names; files directly in the root: unlabelled),
- zip and tar(.gz) archives with the same layout,
- EDM `dataset_tool` zips/folders: `dataset.json` {"labels": [[file, label], ...]} (optionally "captions"),
- `.npz` with `images` ([N,H,W,C] or [N,C,H,W] uint8) and optional `labels`.
`prefix` picks a sub-folder inside any of these (e.g. "train" in the CIFAR-10 tarball).
Images are centre-cropped to a square and resized to `resolution`.
"""

import io
import itertools
import json
import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {'.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif', '.tif', '.tiff'}


class DataError(ValueError):
    pass


def _is_image(name):
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


class _Archive:
    """Uniform read access to a folder, a zip or a tar archive: names relative to the root, bytes by name."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.is_dir():
            self.kind = 'dir'
            self.names = sorted(str(p.relative_to(self.path).as_posix()) for p in self.path.rglob('*') if p.is_file())
        elif zipfile.is_zipfile(self.path):
            self.kind = 'zip'
            self._zip = None
            with zipfile.ZipFile(self.path) as z:
                self.names = sorted(n for n in z.namelist() if not n.endswith('/'))
        elif self.path.is_file() and tarfile.is_tarfile(self.path):
            # Tar has no random access: read the members once into memory (compressed image bytes only).
            self.kind = 'tar'
            self._blobs = {}
            with tarfile.open(self.path) as t:
                for m in t:
                    if m.isfile():
                        self._blobs[m.name.lstrip('./')] = t.extractfile(m).read()
            self.names = sorted(self._blobs)
        else:
            raise DataError(f'{self.path}: not a folder, zip, tar archive or .npz file')

    def read(self, name):
        if self.kind == 'dir':
            return (self.path / name).read_bytes()
        if self.kind == 'zip':
            if self._zip is None:       # opened lazily, once per process (DataLoader workers fork)
                self._zip = zipfile.ZipFile(self.path)
            return self._zip.read(name)
        return self._blobs[name]

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_zip'] = None
        return state


def _prepare(image, resolution, channels, where):
    """PIL image -> uint8 [C,H,W]: mode, centre crop to square, resize."""
    image = image.convert('L' if channels == 1 else 'RGB')
    w, h = image.size
    if resolution is not None and (w, h) != (resolution, resolution):
        s = min(w, h)
        image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    if resolution is None and array.shape[0] != array.shape[1]:
        raise DataError(f'{where}: image is {array.shape[1]}x{array.shape[0]}; give a resolution to crop and resize')
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, path, resolution=None, channels=3, prefix='', max_images=None, captions=None):
        self.path, self.resolution, self.channels = Path(path), resolution, channels
        if not self.path.exists():
            raise DataError(f'{self.path}: no such file or folder')
        self.captions = None
        if self.path.suffix == '.npz':
            self._init_npz()
        else:
            self._init_archive(prefix.strip('/'))
        if len(self) == 0:
            raise DataError(f'{self.path}: no images found' + (f' under {prefix!r}' if prefix else ''))
        if captions is not None:
            self._attach_captions(captions)
        if max_images is not None and max_images < len(self):
            keep = np.random.default_rng(0).permutation(len(self))[:max_images]
            keep.sort()
            self._subset(keep)

    # -- sources --------------------------------------------------------------------------------------
    def _init_npz(self):
        with np.load(self.path) as data:
            if 'images' not in data:
                raise DataError(f'{self.path}: expected an array named "images", found {sorted(data.files)}')
            images = data['images']
            labels = data['labels'] if 'labels' in data else None
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f'{self.path}: "images" must be uint8 [N,H,W,C] or [N,C,H,W], got {images.dtype} {images.shape}')
        if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
            images = images.transpose(0, 3, 1, 2)
        if labels is not None and len(labels) != len(images):
            raise DataError(f'{self.path}: {len(labels)} labels for {len(images)} images')
        self._array = images
        self.names = [f'{self.path.name}[{i}]' for i in range(len(images))]
        self.labels = np.asarray(labels, dtype=np.int64) if labels is not None else None
        self.class_names = [str(i) for i in range(int(self.labels.max()) + 1)] if labels is not None else []
        self._archive = None

    def _init_archive(self, prefix):
        self._archive = archive = _Archive(self.path)
        root = f'{prefix}/' if prefix else ''
        names = [n for n in archive.names if n.startswith(root)]
        meta_name = root + 'dataset.json'
        images = [n for n in names if _is_image(n)]
        labels = None
        if meta_name in names:                            # EDM dataset_tool layout
            try:
                meta = json.loads(archive.read(meta_name))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f'{self.path}:{meta_name}: not valid JSON ({e})') from None
            if meta.get('labels') is not None:
                table = {root + k: v for k, v in meta['labels']}
                missing = [n for n in images if n not in table]
                if missing:
                    raise DataError(f'{self.path}:{meta_name}: no label for {missing[0]} ({len(missing)} unlabelled)')
                labels = [int(table[n]) for n in images]
                self.class_names = [str(i) for i in range(max(labels) + 1)]
            if meta.get('captions') is not None:
                table = {root + k: v for k, v in meta['captions']}
                self.captions = [table.get(n, '') for n in images]
        if labels is None:                                # <class>/<file> layout
            parts = [n[len(root):].split('/') for n in images]
            if images and all(len(p) == 2 for p in parts):
                self.class_names = sorted({p[0] for p in parts})
                index = {c: i for i, c in enumerate(self.class_names)}
                labels = [index[p[0]] for p in parts]
            else:
                self.class_names = []
        self.names = images
        self.labels = np.asarray(labels, dtype=np.int64) if labels is not None else None

    def _attach_captions(self, path):
        """Captions from a separate file ({"captions": [[image name, text], ...]}), e.g. `sida train captions`."""
        from train.captions import read_captions
        try:
            table = read_captions(path)
        except ValueError as e:
            raise DataError(str(e)) from None
        missing = [n for n in self.names if n not in table]
        if missing:
            raise DataError(f'{path}: no caption for {missing[0]} ({len(missing)} of {len(self.names)} images uncaptioned)')
        self.captions = [table[n] for n in self.names]

    def _subset(self, keep):
        self.names = [self.names[i] for i in keep]
        if self.labels is not None:
            self.labels = self.labels[keep]
        if self.captions is not None:
            self.captions = [self.captions[i] for i in keep]
        if self._archive is None:
            self._array = self._array[keep]

    # -- access ---------------------------------------------------------------------------------------
    @property
    def label_dim(self):
        return len(self.class_names) if self.labels is not None else 0

    def __len__(self):
        return len(self.names)

    def image(self, i):
        if self._archive is None:
            hwc = np.moveaxis(self._array[i], 0, -1)
            return _prepare(Image.fromarray(hwc[:, :, 0] if hwc.shape[-1] == 1 else hwc), self.resolution, self.channels, self.names[i])
        name = self.names[i]
        try:
            image = Image.open(io.BytesIO(self._archive.read(name)))
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f'{self.path}:{name}: cannot read image ({e})') from None
        return _prepare(image, self.resolution, self.channels, f'{self.path}:{name}')

    def __getitem__(self, i):
        label = int(self.labels[i]) if self.labels is not None else -1
        return self.image(i), label, i

    def load_all(self, progress=True):
        """Decode everything into one uint8 tensor [N,C,H,W] (small data sets: CIFAR-10 is 150 MB)."""
        from tqdm import tqdm
        first = self.image(0)
        out = torch.empty((len(self),) + tuple(first.shape), dtype=torch.uint8)
        out[0] = first
        for i in tqdm(range(1, len(self)), desc=f'loading {self.path.name}', unit='img', disable=not progress, mininterval=2):
            out[i] = self.image(i)
        return out


class StepSampler:
    """The global batch of step s is a fixed function of (seed, s): every rank draws the same stream
    of shuffled epochs and takes its own slice, so resuming at step s and changing the GPU count
    reproduce the same examples."""

    def __init__(self, size, global_batch, seed=0, rank=0, world=1):
        if global_batch % world:
            raise ValueError(f'global batch {global_batch} is not divisible by {world} processes')
        self.size, self.global_batch, self.seed, self.rank, self.world = size, global_batch, seed, rank, world
        self._epoch, self._perm = None, None

    def _permutation(self, epoch):
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=g)
        return self._perm

    def indices(self, step):
        per_rank = self.global_batch // self.world
        start = step * self.global_batch + self.rank * per_rank
        positions = torch.arange(start, start + per_rank)
        out = torch.empty(per_rank, dtype=torch.int64)
        for epoch in positions.div(self.size, rounding_mode='floor').unique().tolist():
            mask = positions.div(self.size, rounding_mode='floor') == epoch
            out[mask] = self._permutation(epoch)[positions[mask] % self.size]
        return out


class DataStream:
    """This rank's batches, draw after draw: uint8 images [B,C,H,W], int64 labels (None if unlabelled), indices.

    Small data sets are decoded once into memory; larger ones stream through DataLoader workers.
    The position is just the number of draws, so a resumed run continues with the same examples.
    """

    def __init__(self, dataset, global_batch, seed=0, rank=0, world=1, start_draw=0, in_memory=None, workers=None):
        self.dataset, self.draws = dataset, start_draw
        self.sampler = StepSampler(len(dataset), global_batch, seed, rank, world)
        side = dataset.resolution or 64
        if in_memory is None:
            in_memory = len(dataset) * dataset.channels * side * side < 4 << 30
        self.images = dataset.load_all(progress=rank == 0) if in_memory else None
        self.labels = torch.as_tensor(dataset.labels) if dataset.labels is not None else None
        self._loader = None
        self._workers = default_workers() if workers is None else workers

    def _iterate(self):
        batches = (self.sampler.indices(d).tolist() for d in itertools.count(self.draws))
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self._workers,
                                             persistent_workers=self._workers > 0, pin_memory=torch.cuda.is_available())
        return iter(loader)

    def next(self):
        if self.images is not None:
            index = self.sampler.indices(self.draws)
            images = self.images[index]
            labels = self.labels[index] if self.labels is not None else None
        else:
            if self._loader is None:
                self._loader = self._iterate()
            images, labels, index = next(self._loader)
            labels = labels if self.labels is not None else None
        self.draws += 1
        return images, labels, index


def to_model_range(images_uint8):
    """uint8 [0,255] -> float [-1,1], the EDM convention."""
    return images_uint8.float() / 127.5 - 1


def default_workers():
    return min(8, max(0, (os.cpu_count() or 2) - 1))
