"""Encoding generated images for HTTP: PNG (with metadata), JPEG, WebP, or the pixels themselves as .npy (uint8
HWC, or NHWC for several); several files as a zip."""

import io
import json
import zipfile

import numpy as np
from PIL import Image

from models.images import png_info

MEDIA_TYPES = {'png': 'image/png', 'jpeg': 'image/jpeg', 'webp': 'image/webp', 'npy': 'application/x-npy'}


def encode(image, fmt, metadata=None, quality=95):
    """quality: jpeg and webp (0-100). npy carries no metadata (the response's headers and JSON do)."""
    if fmt == 'npy':
        return npy_bytes(image)
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    if fmt == 'png':
        pil.save(buf, format='PNG', pnginfo=png_info(metadata or {}))
    elif fmt == 'jpeg':
        pil.save(buf, format='JPEG', quality=quality, comment=json.dumps(metadata or {}).encode())
    else:
        pil.save(buf, format='WEBP', quality=quality)
    return buf.getvalue()


def zip_images(named_blobs):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_STORED) as z:
        for name, blob in named_blobs:
            z.writestr(name, blob)
    return buf.getvalue()


def npy_bytes(pixels):
    """uint8 pixels in NumPy's .npy format: a short self-describing header (dtype, shape, order), then the raw bytes;
    `numpy.load(io.BytesIO(body))` reads it back bit for bit."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
    return buf.getvalue()
