import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Real images committed with the repository (tests/data/cifar10-mini/README.md): 100 train + 20 test per class.
CIFAR_TAR = ROOT / 'tests' / 'data' / 'cifar10-mini' / 'cifar10-jpeg.tar.gz'
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


@pytest.fixture(scope='session')
def cifar_subset(tmp_path_factory):
    """A real-image folder data set: 20 CIFAR-10 training images per class, as <class>/<file>.jpg."""
    out = tmp_path_factory.mktemp('cifar') / 'train'
    wanted = {f'train/{c}/{i:04d}.jpg' for c in CLASSES for i in range(20)}
    with tarfile.open(CIFAR_TAR) as t:
        for member in t:
            name = member.name.lstrip('./')
            if name in wanted:
                target = out / name.split('/', 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(t.extractfile(member).read())
    assert sum(1 for _ in out.rglob('*.jpg')) == len(wanted)
    return out
