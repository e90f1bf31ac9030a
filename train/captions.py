"""Captions for labelled images, read off the pixels: "a bright photo of a red automobile".

The zoo's text model learns from CIFAR-10 with captions made of the class name plus two attributes
measured on each image: the dominant colour of the centre (where CIFAR objects sit) and the overall
brightness. Cheap, deterministic, and varied enough that a sentence encoder's neighbourhoods
("a crimson car" ~ "a red automobile") carry over to free-form prompts.
"""

import json
from pathlib import Path

import numpy as np
import torch

# Hue ranges in degrees (start inclusive); red wraps around 0.
HUES = [('red', 0, 15), ('orange', 15, 40), ('yellow', 40, 70), ('green', 70, 160), ('blue', 160, 260),
        ('purple', 260, 300), ('pink', 300, 345), ('red', 345, 360)]

# Prompts every sample grid and evaluation of a text model uses; kept in the precomputed tables too.
DEMO_PROMPTS = ['a photo of a red automobile', 'a crimson car', 'a ship at sea', 'a bright photo of a yellow truck',
                'a dark photo of a black cat', 'a white horse', 'a green frog', 'an airplane in a blue sky']


def _hsv(image_chw):
    """uint8 [3,H,W] -> hue in degrees, saturation and value in [0,1], each [H,W]."""
    from matplotlib.colors import rgb_to_hsv
    hsv = rgb_to_hsv(image_chw.permute(1, 2, 0).float().div(255).numpy())
    return hsv[..., 0] * 360, hsv[..., 1], hsv[..., 2]


def dominant_colour(image_chw):
    """The most common colour name of the centre half of the image."""
    h, w = image_chw.shape[-2:]
    centre = image_chw[:, h // 4: h - h // 4, w // 4: w - w // 4]
    hue, sat, val = (a.ravel() for a in _hsv(centre))
    names = np.empty(hue.shape, dtype=object)
    for name, lo, hi in HUES:
        names[(hue >= lo) & (hue < hi)] = name
    names[(names == 'orange') & (val < 0.55)] = 'brown'          # dark orange reads as brown
    grey = (sat < 0.2) | (val < 0.15)
    if grey.mean() > 0.6:          # mostly achromatic: black, white or gray by the median value
        v = float(np.median(val[grey]))
        return 'black' if v < 0.25 else 'white' if v > 0.75 else 'gray'
    values, counts = np.unique(names[~grey].astype(str), return_counts=True)
    return str(values[counts.argmax()])


def brightness(image_chw):
    """'bright', 'dark' or '' from the mean luma of the whole image."""
    luma = (image_chw.float() * torch.tensor([0.299, 0.587, 0.114]).reshape(3, 1, 1)).sum(0).mean().item() / 255
    return 'dark' if luma < 0.3 else 'bright' if luma > 0.62 else ''


def caption(image_chw, class_name):
    if image_chw.shape[0] == 1:
        image_chw = image_chw.repeat(3, 1, 1)
    noun = f'{dominant_colour(image_chw)} {class_name}'
    head = f'{brightness(image_chw)} photo'.strip()
    return f'{_a(head)} {head} of {_a(noun)} {noun}'


def _a(phrase):
    return 'an' if phrase[0] in 'aeiou' else 'a'


def caption_dataset(dataset, progress=True):
    """[(image name, caption)] for a labelled ImageDataset."""
    from tqdm import tqdm
    if dataset.labels is None:
        raise ValueError(f'{dataset.path}: captions are built from class labels; this data set has none')
    out = []
    for i in tqdm(range(len(dataset)), desc='captioning', unit='img', disable=not progress, mininterval=2):
        out.append((dataset.names[i], caption(dataset.image(i), dataset.class_names[dataset.labels[i]])))
    return out


def write_captions(path, pairs, source):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({'source': str(source), 'captions': [list(p) for p in pairs]}, indent=0) + '\n')


def read_captions(path):
    """{image name: caption} from a captions file (`sida train captions`) or a dataset.json-style one."""
    try:
        data = json.loads(Path(path).read_text())
        return {str(k): str(v) for k, v in data['captions']}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f'{path}: not a captions file ({e}); expected {{"captions": [[image name, text], ...]}}') from None
