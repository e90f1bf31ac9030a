"""CIFAR-10 in the form the training recipes read: one tarball of JPEG files,

    cifar10-jpeg.tar.gz:  train/<class>/NNNN.jpg (5,000 per class), test/<class>/NNNN.jpg (1,000 per class)

made from the official python archive (downloaded and checked against its md5, or a local copy) or from a
JPEG copy laid out by class (a folder, zip or tar). The output is a function of the input alone: members
in name order, fixed metadata, fixed JPEG quality, and it appears only once complete (tmp + rename).
"""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
MD5 = 'c58f30108f718f92721af3b95e74349a'
ARCHIVE = 'cifar10-jpeg.tar.gz'
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
SPLITS = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
# The quality of the JPEG re-encoding the model zoo was trained and measured on, so numbers stay comparable.
JPEG_QUALITY = 75


class Cifar10Error(Exception):
    pass


def md5sum(path):
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path, write):
    """Write through `write(file)` into path + '.tmp', then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    try:
        with open(tmp, 'wb') as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def download(url, path, md5=MD5, log=print):
    """The official archive at `path`, downloaded unless a copy with the right md5 is already there."""
    path = Path(path)
    if path.is_file() and md5sum(path) == md5:
        log(f'using {path} (md5 checked)')
        return path
    log(f'downloading {url}')
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            _write_atomic(path, lambda f: _copy(response, f))
    except (urllib.error.URLError, OSError) as e:
        raise Cifar10Error(f'could not download {url} ({getattr(e, "reason", e)}); pass --from PATH with a local copy') from None
    got = md5sum(path)
    if got != md5:
        path.unlink()
        raise Cifar10Error(f'{url}: the download has md5 {got}, expected {md5} (corrupt or changed; try again or pass --from PATH)')
    return path


def _copy(src, dst):
    for block in iter(lambda: src.read(1 << 20), b''):
        dst.write(block)


class _ArraysOnly(pickle.Unpickler):
    """The official batches are pickled dicts of numpy arrays and lists; refuse anything else a pickle could run.
    (_codecs.encode is how protocol-2 pickles written by Python 3 store bytes.)"""
    ALLOWED = {('_codecs', 'encode'), ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', '_reconstruct'),
               ('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar')}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f'unexpected object {module}.{name}')
        return super().find_class(module, name)


def _jpeg(hwc):
    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, format='JPEG', quality=JPEG_QUALITY)
    return buf.getvalue()


def is_python_archive(path):
    path = Path(path)
    if not (path.is_file() and tarfile.is_tarfile(path)):
        return False
    with tarfile.open(path) as t:
        return any(PurePosixPath(n).name == 'batches.meta' for n in t.getnames())


def from_python_archive(path):
    """{archive name: JPEG bytes} from the official python tarball (pickled uint8 [N,3072] rows, CHW order)."""
    with tarfile.open(path) as t:
        members = {PurePosixPath(m.name).name: m for m in t if m.isfile()}

        def load(name):
            if name not in members:
                raise Cifar10Error(f'{path}: not the CIFAR-10 python archive (no {name} in it)')
            try:
                return _ArraysOnly(t.extractfile(members[name]), encoding='bytes').load()
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
                raise Cifar10Error(f'{path}:{name}: not a CIFAR-10 batch ({e})') from None

        names = [n.decode() for n in load('batches.meta').get(b'label_names', [])]
        if tuple(names) != CLASSES:
            raise Cifar10Error(f'{path}: batches.meta names the classes {names}, expected {list(CLASSES)}')
        files = {}
        for split, batches in SPLITS.items():
            counts = [0] * len(CLASSES)
            for batch_name in batches:
                batch = load(batch_name)
                data, labels = np.asarray(batch.get(b'data')), list(batch.get(b'labels', []))
                if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                    raise Cifar10Error(f'{path}:{batch_name}: expected uint8 data [N,3072] and N labels, '
                                       f'got {data.dtype} {list(data.shape)} and {len(labels)} labels')
                images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                for image, label in zip(images, labels):
                    if not 0 <= label < len(CLASSES):
                        raise Cifar10Error(f'{path}:{batch_name}: label {label} outside 0..9')
                    files[f'{split}/{CLASSES[label]}/{counts[label]:04d}.jpg'] = _jpeg(np.ascontiguousarray(image))
                    counts[label] += 1
    return files


def from_jpeg_layout(path):
    """{archive name: JPEG bytes} from a folder, zip or tar holding [root/]{train,test}/<class>/<file>.jpg (bytes kept)."""
    from train.data import DataError, _Archive
    try:
        archive = _Archive(path)
    except DataError as e:
        raise Cifar10Error(f'{e}; expected the CIFAR-10 python archive or JPEG files as train|test/<class>/<file>.jpg') from None
    files = {}
    for name in archive.names:
        parts = PurePosixPath(name).parts
        if any(p.startswith('.') for p in parts):         # .DS_Store, ._ files and the like
            continue
        is_jpeg = PurePosixPath(name).suffix.lower() in ('.jpg', '.jpeg')
        if len(parts) < 3 or parts[-3] not in SPLITS or parts[-2] not in CLASSES or not is_jpeg:
            raise Cifar10Error(f'{path}: {name} does not fit the layout train|test/<class>/<file>.jpg '
                               f'(classes: {", ".join(CLASSES)})')
        data = archive.read(name)
        if data[:2] != b'\xff\xd8':
            raise Cifar10Error(f'{path}: {name} is not a JPEG file')
        files['/'.join(parts[-3:])] = data
    for split in SPLITS:
        missing = [c for c in CLASSES if not any(n.startswith(f'{split}/{c}/') for n in files)]
        if missing:
            raise Cifar10Error(f'{path}: no {split} images for {", ".join(missing)} (expected {split}/<class>/<file>.jpg)')
    return files


def write_archive(files, path):
    """A reproducible .tar.gz: members in name order, mtime 0, mode 0644, gzip without a timestamp."""
    def write(f):
        with gzip.GzipFile(filename='', mode='wb', fileobj=f, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            for name in sorted(files):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
                tar.addfile(info, io.BytesIO(files[name]))
    _write_atomic(path, write)
    return Path(path)


def prepare_cifar10(out_dir, source=None, url=URL, md5=MD5, log=print):
    """Write out_dir/cifar10-jpeg.tar.gz from `source` (python archive or JPEG layout), or from a checked download."""
    out_dir = Path(out_dir)
    if source is None:
        source = download(url, out_dir / PurePosixPath(url).name, md5, log)
    source = Path(source)
    if not source.exists():
        raise Cifar10Error(f'{source}: no such file or folder')
    log(f'converting {source}')
    try:
        files = from_python_archive(source) if is_python_archive(source) else from_jpeg_layout(source)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise Cifar10Error(f'{source}: cannot read the archive ({e})') from None
    counts = {split: sum(n.startswith(f'{split}/') for n in files) for split in SPLITS}
    path = write_archive(files, out_dir / ARCHIVE)
    log(f'wrote {path}: {counts["train"]:,} train and {counts["test"]:,} test images')
    return path
