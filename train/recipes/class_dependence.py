"""How much the class, rather than the seed, decides what class-conditional bundles draw: the same seeds under every
class, split into class and seed shares in the FD-CIFAR classifier's features and in 8x8 pixels
(train.evaluate.class_dependence). Teachers (provenance method edm-teacher) are sampled with EDM Heun at 35 NFE.

    python train/recipes/class_dependence.py OUT.json models/zoo/cifar10-cond-teacher models/zoo/cifar10-cond [--seeds 30]
"""

import argparse
import json
import time

import torch

from models.bundle import is_teacher, load_bundle
from train.evaluate import class_dependence, student_fn, teacher_fn
from train.metrics import ClassifierFeatures

CLASSIFIER = 'models/zoo/fd-cifar-classifier/classifier.pt'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', help='JSON file for the results')
    parser.add_argument('bundles', nargs='+', help='class-conditional bundles')
    parser.add_argument('--seeds', type=int, default=30, help='seeds drawn under every class')
    parser.add_argument('--classifier', default=CLASSIFIER)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = parser.parse_args()
    features = ClassifierFeatures(a.classifier, a.device)
    rows = {}
    for path in a.bundles:
        bundle = load_bundle(path, device=a.device)
        shape = (bundle.config.channels, bundle.config.resolution, bundle.config.resolution)
        start = time.time()
        with torch.inference_mode():
            generator = bundle.generator.eval()     # a teacher the way the evaluation samples it: Heun, 18 steps
            fn = teacher_fn(generator.denoiser, 18) if is_teacher(bundle.config) else student_fn(generator)
            row = class_dependence(fn, features, shape, bundle.generator.label_dim, a.device, seeds=a.seeds,
                                   batch=250)
        rows[path] = {**row, 'images_total': bundle.config.provenance.get('images_total'),
                      'images_seen': bundle.config.provenance.get('images_seen'), 'seconds': round(time.time() - start, 1)}
        print(path, json.dumps(rows[path]), flush=True)
    with open(a.out, 'w') as f:
        json.dump({'classifier': a.classifier, 'features_id': features.id, 'seeds': a.seeds, 'device': a.device,
                   'precision': 'fp32', 'rows': rows}, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
