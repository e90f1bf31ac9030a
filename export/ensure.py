"""Export if missing: the recorded, verified export of a bundle, made first when there is none (or a stale one)."""

from export.manifest import read_manifest

WHAT = {'onnx': ('ONNX export', 'onnx'), 'tensorrt': ('TensorRT engine', 'tensorrt')}


class ExportMissing(LookupError):
    """No usable export of this kind is recorded for the bundle; the message says why and what to run."""


def recorded_export(bundle_dir, config, kind, precision):
    """The manifest entry of a `kind` ('onnx' | 'tensorrt') export that matches the bundle as it is now and passed its gate."""
    what, command = WHAT[kind]
    what = f'{precision} {what}'
    entry = read_manifest(bundle_dir)['exports'].get(f'{kind}-{precision}')
    if entry is None:
        raise ExportMissing(f'{bundle_dir}: no {what}; run `sida export {command} --bundle {bundle_dir}`')
    if entry.get('bundle_sha256') != config.sha256:
        raise ExportMissing(f'{bundle_dir}: the {what} is stale (bundle weights changed); export again')
    if not entry['parity']['passed']:
        raise ExportMissing(f'{bundle_dir}: the {what} failed its parity gate (kept with --force); not using it')
    return entry


def ensure_export(bundle_dir, kind, precision, log=print, **export_options):
    """The verified export, exporting it now (with its parity gate) when it is missing or stale."""
    from models.bundle import validate_bundle
    try:
        return recorded_export(bundle_dir, validate_bundle(bundle_dir), kind, precision)
    except ExportMissing as e:
        log(f'{e}; exporting it now')
    if kind == 'onnx':
        from export.onnx_export import export_onnx
        return export_onnx(bundle_dir, precision, log=log, **export_options)
    from export.tensorrt_export import export_tensorrt
    return export_tensorrt(bundle_dir, precision, log=log, **export_options)
