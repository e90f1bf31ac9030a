"""The room packages have generic names; make sure they are ours and not some installed namesake."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name', ['sida', 'models', 'train', 'export', 'serve', 'ui'])
def test_package_imports_from_this_project(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().parent == ROOT / name
    if name != 'sida':
        assert module.PROJECT == 'sida'
