"""exports/manifest.json: what was exported, how, and how closely it matches PyTorch."""

import datetime
import json
import os
import platform
from pathlib import Path

FORMAT = 'sida-exports/1'


def manifest_path(bundle_dir):
    return Path(bundle_dir) / 'exports' / 'manifest.json'


def read_manifest(bundle_dir):
    path = manifest_path(bundle_dir)
    if path.is_file():
        return json.loads(path.read_text())
    return {'format': FORMAT, 'exports': {}}


def record_export(bundle_dir, key, entry):
    """Add or replace one runtime's entry; the file is replaced atomically."""
    manifest = read_manifest(bundle_dir)
    entry = {**entry, 'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
             'host': platform.node(), 'python': platform.python_version()}
    manifest['exports'][key] = entry
    path = manifest_path(bundle_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(manifest, indent=2) + '\n')
    os.replace(tmp, path)
    return manifest


def runtime_versions(*names):
    import importlib
    out = {}
    for name in names:
        try:
            out[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            out[name] = None
    return out
