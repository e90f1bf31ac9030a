"""Re-check recorded exports against the bundle as it is now (stale or tampered files fail)."""

from pathlib import Path

from export.manifest import read_manifest
from export.parity import run_parity
from models.bundle import load_bundle


def verify_exports(bundle_dir, batch_sizes=(1, 3)):
    """{key: report} for every ONNX export in the manifest; hash drift is reported without running anything."""
    bundle = load_bundle(bundle_dir, return_float=True)
    results = {}
    for key, entry in read_manifest(bundle_dir)['exports'].items():
        if entry.get('runtime') != 'onnxruntime':
            continue
        if entry.get('bundle_sha256') != bundle.config.sha256:
            results[key] = {'passed': False, 'reason': 'the bundle weights changed since this export (sha256 differs)'}
        from export.onnx_export import ort_session
        session = ort_session(Path(bundle_dir) / entry['file'])
        report = run_parity(lambda inputs: session.run(['images', 'images_float'], {k: v.numpy() for k, v in inputs.items()}),
                            bundle.generator, bundle.config, entry['precision'], batch_sizes)
        if key in results:
            results[key]['parity'] = report
        else:
            results[key] = report
    return results
