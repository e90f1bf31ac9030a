"""Encoding generated images for HTTP: PNG (with metadata), JPEG, WebP; several images as a zip."""

import io
import json
import zipfile

from PIL import Image

from models.images import png_info

MEDIA_TYPES = {'png': 'image/png', 'jpeg': 'image/jpeg', 'webp': 'image/webp'}


def encode(image, fmt, metadata=None, quality=95):
    """quality: jpeg and webp (0-100)."""
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
