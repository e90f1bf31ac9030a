"""Writing generated images: PNG files with their metadata, and sample grids."""

import json
import math

import numpy as np
from PIL import Image, PngImagePlugin


def png_info(metadata):
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    return info


def save_png(path, image, metadata=None):
    """image: uint8 [H,W,3] array; metadata goes into tEXt chunks (model, seed, condition, ...)."""
    Image.fromarray(np.asarray(image)).save(path, format='PNG', pnginfo=png_info(metadata or {}))


def make_grid(images, columns=None):
    """uint8 [N,H,W,3] -> one uint8 image, row-major, as square as possible by default."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
    return grid
