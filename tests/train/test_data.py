import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.train.conftest import CIFAR_TAR, CLASSES
from train.data import DataError, DataStream, ImageDataset, StepSampler


def _png(color, size=(12, 8)):
    buf = io.BytesIO()
    Image.new('RGB', size, color).save(buf, format='PNG')
    return buf.getvalue()


def test_folder_layout_gives_class_labels(cifar_subset):
    ds = ImageDataset(cifar_subset)
    assert len(ds) == 200 and ds.class_names == CLASSES and ds.label_dim == 10
    image, label, index = ds[45]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 2 and index == 45


def test_committed_subset_matches_its_checksum_and_counts():
    import hashlib
    line = (CIFAR_TAR.parent / 'SHA256SUMS').read_text().split()
    assert line == [hashlib.sha256(CIFAR_TAR.read_bytes()).hexdigest(), CIFAR_TAR.name]
    assert len(ImageDataset(CIFAR_TAR, prefix='train')) == 1000 and len(ImageDataset(CIFAR_TAR, prefix='test')) == 200


def test_tarball_with_prefix_matches_the_folder(cifar_subset):
    ds = ImageDataset(CIFAR_TAR, prefix='test', max_images=50)
    assert len(ds) == 50 and ds.class_names == CLASSES
    assert ds.names[0].startswith('test/')


def test_zip_and_edm_dataset_json_labels_and_captions(tmp_path):
    with zipfile.ZipFile(tmp_path / 'd.zip', 'w') as z:
        for i, color in enumerate(['red', 'green', 'blue']):
            z.writestr(f'00000/img{i:08d}.png', _png(color))
        z.writestr('dataset.json', json.dumps({'labels': [[f'00000/img{i:08d}.png', i % 2] for i in range(3)],
                                               'captions': [[f'00000/img{i:08d}.png', f'a {c} square'] for i, c in
                                                            enumerate(['red', 'green', 'blue'])]}))
    ds = ImageDataset(tmp_path / 'd.zip', resolution=8)
    assert ds.labels.tolist() == [0, 1, 0] and ds.label_dim == 2
    assert ds.captions == ['a red square', 'a green square', 'a blue square']
    image, _, _ = ds[2]
    assert image.shape == (3, 8, 8) and image[2].float().mean() > 200 and image[0].float().mean() < 50  # centre-cropped blue


def test_tar_gz_of_class_folders(tmp_path):
    with tarfile.open(tmp_path / 'd.tar.gz', 'w:gz') as t:
        for name, color in [('cats/a.png', 'red'), ('dogs/b.png', 'blue')]:
            data = _png(color, (8, 8))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    ds = ImageDataset(tmp_path / 'd.tar.gz')
    assert ds.class_names == ['cats', 'dogs'] and ds.labels.tolist() == [0, 1]


def test_npz_arrays(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / 'd.npz', images=images, labels=np.array([0, 1, 2, 1, 0]))
    ds = ImageDataset(tmp_path / 'd.npz')
    assert len(ds) == 5 and ds.label_dim == 3
    assert torch.equal(ds[3][0], torch.from_numpy(images[3]).permute(2, 0, 1))
    np.savez(tmp_path / 'bad.npz', images=images, labels=np.zeros(4))
    with pytest.raises(DataError, match='4 labels for 5 images'):
        ImageDataset(tmp_path / 'bad.npz')


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'good.png').write_bytes(_png('red', (8, 8)))
    (tmp_path / 'a' / 'broken.png').write_bytes(b'not an image')
    ds = ImageDataset(tmp_path)
    with pytest.raises(DataError, match='broken.png: cannot read image'):
        ds.load_all(progress=False)


def test_empty_and_missing(tmp_path):
    with pytest.raises(DataError, match='no images found'):
        ImageDataset(tmp_path)
    with pytest.raises(DataError, match='no such file'):
        ImageDataset(tmp_path / 'nope')


def test_step_sampler_is_deterministic_and_world_size_independent():
    one = StepSampler(10, 4, seed=3)
    stream = torch.cat([one.indices(s) for s in range(5)])
    assert sorted(stream[:10].tolist()) == list(range(10))            # first epoch: a permutation
    two = [StepSampler(10, 4, seed=3, rank=r, world=2) for r in range(2)]
    for s in range(5):
        assert torch.equal(torch.cat([two[0].indices(s), two[1].indices(s)]), one.indices(s))


def test_stream_resumes_at_a_draw(cifar_subset):
    ds = ImageDataset(cifar_subset)
    a = DataStream(ds, 8, seed=1)
    draws = [a.next() for _ in range(3)]
    b = DataStream(ds, 8, seed=1, start_draw=2)
    images, labels, _ = b.next()
    assert torch.equal(images, draws[2][0]) and torch.equal(labels, draws[2][1])
