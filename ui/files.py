"""Generated images as files the page can show and offer for download, byte for byte as the API sent them
(so the PNG text chunks with model, seed and condition survive), and a zip of a whole gallery."""

import io
import re
import zipfile

from gradio import processing_utils, utils


def file_name(model, picture):
    item = picture.item
    walk = f'-to{item["seed_b"]}-mix{item["mix"]:.2f}' if item.get('seed_b') is not None else ''
    return re.sub(r'[^A-Za-z0-9._-]+', '_', f'{model}-seed{item["seed"]}{walk}') + f'.{item["format"]}'


def save(data, name):
    """Write into Gradio's own cache (content-addressed), which the page may serve and Blocks(delete_cache=...) prunes."""
    return processing_utils.save_bytes_to_cache(data, name, cache_dir=utils.get_upload_folder())


def save_pictures(model, pictures):
    return [save(p.data, file_name(model, p)) for p in pictures]


def save_zip(model, pictures, name):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_STORED) as z:      # PNGs are compressed already
        for p in pictures:
            z.writestr(file_name(model, p), p.data)
    return save(buf.getvalue(), name)
