"""How often a text model draws the class its prompt names: "a photo of a {class}" for each CIFAR-10 class, PER
images each (seeds from 100), classified by the FD-CIFAR network. The zoo's test asserts the same on fewer images.

    python train/recipes/prompt_accuracy.py OUT.json models/zoo/cifar10-text [OTHER_TEXT_BUNDLE ...] [--per 50]
"""

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch

from models.bundle import load_bundle
from models.seeds import noise_for_seeds
from models.text_encoder import bundle_text_encoder
from train.cifar10 import CLASSES

CLASSIFIER = Path('models/zoo/fd-cifar-classifier/classifier.pt')
FIRST_SEED = 100


def prompt_accuracy(bundle_dir, classifier, per):
    """{bundle, weights_sha256, accuracy, per_class} of the text bundle at bundle_dir; classifier: the loaded network."""
    bundle = load_bundle(bundle_dir)
    c = bundle.config
    embeds = bundle_text_encoder(c).encode([f'a photo of a {name}' for name in CLASSES]).repeat_interleave(per, 0)
    noise = noise_for_seeds(range(FIRST_SEED, FIRST_SEED + per * len(CLASSES)), (c.channels, c.resolution, c.resolution))
    with torch.inference_mode():
        predicted = torch.cat([classifier(bundle.generator(z, text_embeds=e).permute(0, 3, 1, 2).float() / 127.5 - 1).argmax(1)
                               for z, e in zip(noise.split(100), embeds.split(100))])
    hit = predicted == torch.arange(len(CLASSES)).repeat_interleave(per)
    return {'bundle': str(bundle_dir), 'weights_sha256': c.sha256.get('generator.safetensors'),
            'accuracy': round(hit.float().mean().item(), 4),
            'per_class': {name: round(h.float().mean().item(), 4) for name, h in zip(CLASSES, hit.split(per))}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', type=Path)
    parser.add_argument('bundles', type=Path, nargs='+')
    parser.add_argument('--per', type=int, default=50, help='images per class')
    parser.add_argument('--classifier', type=Path, default=CLASSIFIER)
    a = parser.parse_args()
    classifier = torch.jit.load(str(a.classifier)).eval()
    rows = [prompt_accuracy(b, classifier, a.per) for b in a.bundles]
    for row in rows:
        print(f'{row["bundle"]}: {row["accuracy"]:.3f}')
    result = {'what': '"a photo of a {class}" drawn as that class, by the FD-CIFAR classifier',
              'prompt': 'a photo of a {class}', 'images_per_class': a.per, 'seeds_from': FIRST_SEED,
              'classifier': str(a.classifier), 'device': f'cpu ({platform.processor() or platform.machine()}), fp32',
              'date': datetime.date.today().isoformat(), 'rows': rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + '\n')


if __name__ == '__main__':
    main()
