"""`sida data cifar10`: the official python archive (a tiny one in the real format) or a JPEG layout -> the recipes' tarball."""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sida.cli import main
from tests.train.conftest import CIFAR_TAR, CLASSES
from train.cifar10 import ARCHIVE, Cifar10Error, prepare_cifar10
from train.data import ImageDataset

PER_BATCH = 20                      # 5 train batches -> 100 train images, 1 test batch -> 20 test images


def _batch(seed, n=PER_BATCH):
    """Smooth images (a colour plus a ramp) that survive JPEG closely enough to be recognised."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 160, (n, 3, 1, 1))
    ramp = np.arange(32)[None, None, None, :] * 3
    data = np.broadcast_to(colour + ramp, (n, 3, 32, 32)).astype(np.uint8).reshape(n, 3072)
    return {b'batch_label': b'batch', b'labels': [int(i % 10) for i in range(n)], b'data': data, b'filenames': [b'x.png'] * n}


def official_tarball(path, batches=None, meta=None):
    """A tarball in the official python format: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    batches = batches if batches is not None else {**{f'data_batch_{i}': _batch(i) for i in range(1, 6)}, 'test_batch': _batch(9)}
    meta = meta if meta is not None else {b'label_names': [c.encode() for c in CLASSES], b'num_vis': 3072}
    with tarfile.open(path, 'w:gz') as t:
        for name, obj in {**batches, 'batches.meta': meta}.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    return path


def sida(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_official_format_converts_into_what_the_training_loader_reads(tmp_path):
    source = official_tarball(tmp_path / 'cifar-10-python.tar.gz')
    r = sida('data', 'cifar10', '--from', source, '--out', tmp_path / 'out')
    assert r.exit_code == 0, r.output
    archive = tmp_path / 'out' / ARCHIVE
    train, test = ImageDataset(archive, prefix='train'), ImageDataset(archive, prefix='test')
    assert (len(train), len(test)) == (5 * PER_BATCH, PER_BATCH) and train.class_names == list(CLASSES)
    # The first image of data_batch_1 has label 0: train/airplane/0000.jpg, close to its pixels after JPEG.
    first = _batch(1)[b'data'][0].reshape(3, 32, 32)
    image, label, _ = train[train.names.index('train/airplane/0000.jpg')]
    assert label == 0 and (image.float() - torch.from_numpy(first).float()).abs().mean() < 4
    # Deterministic: converting again gives the same bytes.
    again = prepare_cifar10(tmp_path / 'again', source, log=lambda m: None)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(archive.read_bytes()).digest()
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [ARCHIVE]        # no .tmp left behind


def test_jpeg_layout_converts_byte_for_byte(tmp_path):
    folder = tmp_path / 'CIFAR-10-images'      # a root folder above train/ and test/ is fine
    with tarfile.open(CIFAR_TAR) as t:
        for m in t:
            if m.isfile() and m.name.split('/')[2] < '0003':
                (folder / m.name).parent.mkdir(parents=True, exist_ok=True)
                (folder / m.name).write_bytes(t.extractfile(m).read())
    (folder / 'train' / '.DS_Store').write_bytes(b'junk')
    path = prepare_cifar10(tmp_path / 'out', folder, log=lambda m: None)
    ds = ImageDataset(path, prefix='train')
    assert len(ds) == 30 and ds.class_names == list(CLASSES)
    assert ds._archive.read('train/cat/0002.jpg') == (folder / 'train/cat/0002.jpg').read_bytes()


@pytest.mark.parametrize('breakage, fragment', [
    ('truncated', 'cannot read the archive'),
    ('missing batch', 'no data_batch_3 in it'),
    ('wrong classes', 'names the classes'),
    ('wrong shape', 'expected uint8 data [N,3072]'),
])
def test_broken_official_archives_are_refused_in_one_line(tmp_path, breakage, fragment):
    path = tmp_path / 'cifar-10-python.tar.gz'
    if breakage == 'truncated':
        official_tarball(path)
        path.write_bytes(path.read_bytes()[:2000])
    elif breakage == 'missing batch':
        official_tarball(path, batches={f'data_batch_{i}': _batch(i) for i in (1, 2, 4, 5)} | {'test_batch': _batch(9)})
    elif breakage == 'wrong classes':
        official_tarball(path, meta={b'label_names': [b'a', b'b']})
    else:
        bad = _batch(1)
        bad[b'data'] = bad[b'data'][:, :1024]
        official_tarball(path, batches={f'data_batch_{i}': bad for i in range(1, 6)} | {'test_batch': _batch(9)})
    r = sida('data', 'cifar10', '--from', path, '--out', tmp_path / 'out')
    errors = [line for line in r.output.splitlines() if line.startswith('Error')]
    assert r.exit_code == 1 and len(errors) == 1 and fragment in errors[0], r.output
    assert not (tmp_path / 'out' / ARCHIVE).exists()


def test_wrong_folder_layout_is_refused(tmp_path):
    (tmp_path / 'imgs' / 'cat').mkdir(parents=True)
    (tmp_path / 'imgs' / 'cat' / '1.jpg').write_bytes(b'\xff\xd8 not really')
    r = sida('data', 'cifar10', '--from', tmp_path / 'imgs', '--out', tmp_path / 'out')
    assert r.exit_code == 1 and 'does not fit the layout train|test/<class>/<file>.jpg' in r.output, r.output


def test_download_is_checked_against_its_md5(tmp_path):
    source = official_tarball(tmp_path / 'cifar-10-python.tar.gz')
    url = source.as_uri()                       # a real urllib download, from a file:// address (offline)
    with pytest.raises(Cifar10Error, match='md5'):
        prepare_cifar10(tmp_path / 'out', url=url, log=lambda m: None)
    assert not (tmp_path / 'out' / 'cifar-10-python.tar.gz').exists()
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    path = prepare_cifar10(tmp_path / 'out', url=url, md5=md5, log=lambda m: None)
    assert len(ImageDataset(path, prefix='test')) == PER_BATCH


def test_unreachable_network_says_to_pass_a_local_copy(tmp_path):
    with pytest.raises(Cifar10Error, match=r'could not download .*; pass --from PATH with a local copy'):
        prepare_cifar10(tmp_path / 'out', url='http://127.0.0.1:9/cifar-10-python.tar.gz', log=lambda m: None)


def test_usage_errors_exit_2(tmp_path):
    assert sida('data', 'cifar10').exit_code == 2
    assert sida('data', 'cifar10', '--out', tmp_path, '--from', tmp_path / 'nope').exit_code == 2
