"""Side-by-side quality of a teacher (EDM Heun sampler) and one-step students, in one feature space.

For every model: Frechet distance and precision/recall against the training split in the project
classifier's space (FD-CIFAR), Inception FID against the same training split (TF-FID weights; optional),
the accuracy with which the feature classifier recognises the requested class, and wall-clock per image
at a fixed batch. The test split's own distances are the floor. Results go to a JSON file and, optionally,
into each student bundle's `provenance.metrics` (keys `fd_cifar`, `fid`, `class_accuracy`, ...).
"""

import hashlib
import json
import time
from pathlib import Path

import torch

from models.generator import to_uint8_nhwc
from models.heun_sampler import edm_sample
from models.seeds import noise_for_seeds
from train.metrics import DataReference, InceptionFeatures, extract, file_digest, frechet_distance, load_features, statistics

EVAL_SEED = 10**7        # evaluation noise never overlaps training or sample-grid seeds


class Conditions:
    """What each evaluated image is asked for: a class (uniform), or the caption of a random training image."""

    def __init__(self, dataset, n, kind, text_encoder=None):
        g = torch.Generator().manual_seed(1)
        self.kind = kind
        index = torch.randint(len(dataset), (n,), generator=g)
        self.labels = torch.as_tensor(dataset.labels)[index] if dataset.labels is not None else None
        if kind == 'class':
            if not dataset.label_dim:
                raise ValueError(f'{dataset.path}: class models are evaluated against labelled data; this data set has none')
            self.labels = torch.arange(n) % dataset.label_dim
        self.embeds = None
        if kind == 'text':
            captions = [dataset.captions[i] for i in index.tolist()]
            self.embeds = torch.cat([text_encoder.encode(captions[i:i + 500]) for i in range(0, n, 500)])

    @classmethod
    def of_labels(cls, labels):
        """Class conditions for exactly these labels."""
        cond = cls.__new__(cls)
        cond.kind, cond.labels, cond.embeds = 'class', labels, None
        return cond

    def batch(self, i, j, num_classes, device):
        if self.kind == 'class':
            return {'class_labels': torch.nn.functional.one_hot(self.labels[i:j], num_classes).float().to(device)}
        if self.kind == 'text':
            return {'text_embeds': self.embeds[i:j].to(device)}
        return {}


def sample(fn, noise, cond, num_classes, device, batch, autocast):
    """One image per noise as uint8 [N,C,H,W], plus seconds per image measured after the first (warm-up) batch."""
    n = len(noise)
    images, timed, timed_images = [], 0.0, 0
    for i in range(0, n, batch):
        j = min(i + batch, n)
        z, c = noise[i:j].to(device), cond.batch(i, j, num_classes, device)
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            x = fn(z, c)
        _sync(device)
        if i > 0 and j - i == batch:
            timed, timed_images = timed + time.perf_counter() - start, timed_images + (j - i)
        images.append(to_uint8_nhwc(x.float()).permute(0, 3, 1, 2).cpu())
    return torch.cat(images), (timed / timed_images if timed_images else None)


def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def predicted_classes(features, images_uint8):
    """The feature network's classifier head's class for each image."""
    with torch.no_grad():
        return torch.cat([features.net(images_uint8[i:i + 500].to(features.device, torch.float32) / 127.5 - 1).argmax(1).cpu()
                          for i in range(0, len(images_uint8), 500)])


def class_accuracy(features, images_uint8, labels):
    """How often the feature network's classifier head names the requested class."""
    return (predicted_classes(features, images_uint8) == labels).double().mean().item()


def _two_way_shares(table):
    """[classes, seeds, dims] -> the fractions of the total variance explained by the class and by the seed."""
    centred = table - table.mean((0, 1))
    total = centred.square().sum(-1).mean()

    def share(part):
        return min(1.0, (part.square().sum(-1).mean() / total).item())     # <= 1 but for rounding
    return share(centred.mean(1)), share(centred.mean(0))


def class_dependence(fn, features, shape, num_classes, device, seeds=100, batch=500, autocast=False):
    """How much the requested class, rather than the seed, decides a class model's image. The same `seeds` noises are
    generated under every class and put through the feature network:
    - class_share / seed_share: the fractions of the features' variance explained by the class and by the seed (a
      two-way split of the [seeds, classes] table; the rest is their interaction); pixel_class_share /
      pixel_seed_share: the same split of the images at 8x8 pixels (layout and colour);
    - seed_lock: per seed, the share of its images the classifier puts in the seed's most frequent class, averaged:
      1/num_classes when every image follows its class, 1.0 when the seed alone decides what is drawn;
    - same_seed_accuracy: how often the classifier names the requested class on these images."""
    noise = noise_for_seeds(range(EVAL_SEED, EVAL_SEED + seeds), shape).repeat(num_classes, 1, 1, 1)
    labels = torch.arange(num_classes).repeat_interleave(seeds)               # class-major: [class 0 x seeds, class 1 x ...]
    images, _ = sample(fn, noise, Conditions.of_labels(labels), num_classes, device, batch, autocast)
    class_share, seed_share = _two_way_shares(extract(features, images).double().view(num_classes, seeds, -1))
    # The same split of the pixels at 8x8 (layout and colour): what a grid's eye sees before what the classifier sees.
    pooled = torch.nn.functional.adaptive_avg_pool2d(images.double(), 8).flatten(1)
    pixel_class_share, pixel_seed_share = _two_way_shares(pooled.view(num_classes, seeds, -1))
    predicted = predicted_classes(features, images).view(num_classes, seeds)
    lock = torch.stack([torch.bincount(predicted[:, s], minlength=num_classes).max() for s in range(seeds)]).double() / num_classes
    return {'class_share': class_share, 'seed_share': seed_share, 'pixel_class_share': pixel_class_share,
            'pixel_seed_share': pixel_seed_share, 'seed_lock': lock.mean().item(),
            'same_seed_accuracy': (predicted == labels.view(num_classes, seeds)).double().mean().item(),
            'class_dependence_seeds': seeds}


def data_key(dataset, shape):
    """What identifies a data set's reference statistics: the archive's sha256 (a folder: its file names and sizes),
    the images taken from it and their shape. A changed file gets new statistics; a moved one keeps them."""
    if dataset.path.is_file():
        digest = file_digest(dataset.path)
    else:
        h = hashlib.sha256()
        for name in dataset.names:
            h.update(f'{name}|{(dataset.path / name).stat().st_size}\n'.encode())
        digest = h.hexdigest()[:16]
    return f'{dataset.path.name}|sha256:{digest}|{len(dataset)}|{dataset.names[0]}|{dataset.names[-1]}|{tuple(shape)}'


def describe_inception(features):
    """Which Inception weights a FID was measured with, for eval.json and bundle cards; the weights' digest, not the
    file's name, tells copies apart, so one copy gives one description wherever it lies (progress plots match on it)."""
    if features.rounding:
        return f'TF-FID Inception-v3 (2015-12-05), {features.rounding["dtype"]}-rounded copy ({features.id})'
    return f'TF-FID Inception-v3 (2015-12-05) ({features.id})'


def evaluate(dataset, test_dataset, classifier_path, models, n=10_000, device='cpu', batch=500, autocast=False, log=print,
             cache_dir=None, fid=False, fid_weights=None, dependence_seeds=100):
    """models: [(name, kind, fn(noise, cond) -> [-1,1] images, condition kind)], kind 'teacher' or 'student'.

    dependence_seeds: class models also get `class_dependence` from this many seeds under every class (0: skip).

    fid: also Inception FID against the training split, with `fid_weights` (a local TorchScript, e.g. a rounded
    copy) or, when None, the weights of the [fid] extra.
    Returns {'reference': ..., 'rows': [{name, fd, fid, precision, recall, class_accuracy, seconds_per_image}]}.
    """
    features = load_features(f'classifier:{classifier_path}', device)
    inception = InceptionFeatures(fid_weights, device) if fid else None
    train_images = dataset.load_all()
    shape = tuple(train_images.shape[1:])
    key = data_key(dataset, shape)
    reference = DataReference(features, train_images, key, cache_dir=cache_dir)
    fid_reference = None
    if inception is not None:
        log(f'Inception FID: {describe_inception(inception)}')
        fid_reference = DataReference(inception, train_images, key, cache_dir=cache_dir, sample=0)
        cached = f' (cached in {fid_reference.path})' if fid_reference.cached else ''
        log(f'FID reference: {fid_reference.count} training images{cached}')
    rows = []
    if test_dataset is not None:
        test_images = test_dataset.load_all()
        mu, sigma = statistics(extract(features, test_images))
        rows.append({'name': 'test split', 'kind': 'data', 'images': len(test_images),
                     'fd': frechet_distance(mu, sigma, reference.mu, reference.sigma)})
        if fid_reference is not None:
            rows[-1]['fid'] = fid_reference.compare(test_images, 'x')['metric_fd_x']
        if test_dataset.labels is not None:
            rows[-1]['class_accuracy'] = class_accuracy(features, test_images, torch.as_tensor(test_dataset.labels))
        log('test split: ' + ', '.join(f'{k} {v:.4g}' for k, v in rows[-1].items() if isinstance(v, float)))
    encoders = {}
    for name, kind, fn, cond_kind, encoder in models:
        if cond_kind == 'text' and id(encoder) not in encoders:      # encode the captions once per encoder
            encoders[id(encoder)] = Conditions(dataset, n, 'text', encoder)
        cond = encoders[id(encoder)] if cond_kind == 'text' else Conditions(dataset, n, cond_kind)
        noise = noise_for_seeds(range(EVAL_SEED, EVAL_SEED + n), shape)
        images, seconds = sample(fn, noise, cond, dataset.label_dim, device, batch, autocast)
        m = reference.compare(images, 'x')
        row = {'name': name, 'kind': kind, 'images': n, 'fd': m['metric_fd_x'], 'precision': m['precision_x'],
               'recall': m['recall_x'], 'seconds_per_image': seconds, 'batch': batch}
        if fid_reference is not None:
            row['fid'] = fid_reference.compare(images, 'x')['metric_fd_x']
        if cond.labels is not None and cond_kind in ('class', 'text'):
            row['class_accuracy'] = class_accuracy(features, images, cond.labels)
        if cond_kind == 'class' and dependence_seeds:
            row.update(class_dependence(fn, features, shape, dataset.label_dim, device, dependence_seeds, batch, autocast))
        rows.append(row)
        log(f'{name}: ' + ', '.join(f'{k} {v:.4g}' for k, v in row.items() if isinstance(v, float)))
    result = {'feature_space': 'FD-CIFAR (penultimate features of the project classifier; not Inception FID)',
              'classifier': str(classifier_path), 'features_id': features.id, 'reference': f'{dataset.path} ({len(dataset)} images)',
              'device': torch.cuda.get_device_name() if torch.device(device).type == 'cuda' else 'cpu',
              'precision': 'bf16 autocast' if autocast else 'fp32', 'rows': rows}
    if inception is not None:
        result['fid'] = {'weights': describe_inception(inception), 'features_id': inception.id, 'rounding': inception.rounding,
                         'reference_images': fid_reference.count,
                         'protocol': 'pool3 features of uint8 images resized to 299x299 as TF1 resize_bilinear does, fp32; '
                                     'each row\'s images against the training split\'s statistics',
                         'note': 'comparable between models measured on the same data and sample count; FID on the JPEG '
                                 'CIFAR-10 copy, or from fewer than 50k samples, is not comparable with published CIFAR-10 FIDs'}
    return result


def teacher_fn(denoiser, num_steps):
    return lambda z, c: edm_sample(denoiser, z, num_steps=num_steps, **c)


def student_fn(generator):
    """A bundle's OneStepGenerator, returning [-1,1] floats."""
    return lambda z, c: generator.denoise(z, **c)


def record_in_bundle(bundle_dir, metrics, drop=()):
    """Merge metrics into sida.json provenance.metrics (weights and their hashes are untouched). Older numbers go
    first where they could be misread: keys containing any of `drop` (a student's teacher columns, written again
    only for its own teacher), and per-NFE numbers measured with another classifier or other Inception weights than
    the new ones, so that no number sits under a feature space it was not measured in."""
    path = Path(bundle_dir) / 'sida.json'
    config = json.loads(path.read_text())
    provenance = config.setdefault('provenance', {})
    old = {k: v for k, v in provenance.get('metrics', {}).items() if not any(d in k for d in drop)}
    for row_key, name in RECORDED:
        measured_with = MEASURED_WITH[row_key]
        if measured_with in metrics and old.get(measured_with) != metrics[measured_with]:
            old = {k: v for k, v in old.items() if not k.startswith(f'{name}_nfe')}
    provenance['metrics'] = {**old, **metrics}
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(config, indent=2) + '\n')
    tmp.replace(path)


RECORDED = (('fd', 'fd_cifar'), ('fid', 'fid'))      # eval row key -> provenance.metrics name
MEASURED_WITH = {'fd': 'classifier_sha256', 'fid': 'fid_weights'}     # what each was measured with


def recorded_at(metrics, nfe, measured_with):
    """{fd?, fid?}: a teacher card's recorded numbers at `nfe` (provenance.metrics), each only where it was measured
    with the same network as `measured_with` says ({classifier_sha256, fid_weights})."""
    return {k: metrics[f'{key}_nfe{nfe}'] for k, key in RECORDED
            if f'{key}_nfe{nfe}' in metrics and metrics.get(MEASURED_WITH[k]) == measured_with.get(MEASURED_WITH[k])}


def teacher_progress(teachers, rows, nfe, measured_with):
    """Teachers' quality against the images they have seen in all their runs (provenance images_total, kept across
    `sida train teacher --init-from` restarts): a series per teacher evaluated now at `nfe`, with a point for it and
    one for each earlier bundle of its --init-from chain that holds a record measured the same way (`measured_with`:
    the classifier's sha256 for FD-CIFAR, the Inception weights for FID; `--record` writes them). The chain ends at a
    bundle that is gone, unreadable or not the one recorded (its weights' sha256). [{series, name, bundle,
    images_total, fd?, fid?}] sorted by series, then images_total."""
    from models.bundle import BundleError, load_bundle
    points, seen = [], set()

    def add(series, name, bundle_dir, provenance, metrics):
        total = provenance.get('images_total', provenance.get('images_seen'))
        if metrics and total is not None:
            points.append({'series': series, 'name': name, 'bundle': str(bundle_dir), 'images_total': int(total), **metrics})
    for name, (path, bundle) in teachers.items():     # every fresh number first: it wins over an older record
        seen.add(Path(path).resolve())
        row = rows.get(f'{name} (Heun, {nfe} NFE)', {})
        add(name, name, path, bundle.config.provenance, {k: row[k] for k in ('fd', 'fid') if k in row})
    for name, (path, bundle) in teachers.items():
        earlier = bundle.config.provenance.get('init_from')
        while earlier and Path(earlier['bundle']).resolve() not in seen:
            seen.add(Path(earlier['bundle']).resolve())
            try:
                config = load_bundle(earlier['bundle'], check_hash=False).config
            except (BundleError, OSError):
                break
            if config.sha256.get('generator.safetensors') != earlier.get('weights_sha256'):
                break                                  # replaced since (continued in place): not the recorded start
            add(name, f'{name} <- {Path(earlier["bundle"]).parent.name}', earlier['bundle'], config.provenance,
                recorded_at(config.provenance.get('metrics', {}), nfe, measured_with))
            earlier = config.provenance.get('init_from')
    return sorted(points, key=lambda p: (p['series'], p['images_total']))


def plot_teacher_progress(points, path, nfe):
    """FD-CIFAR (and Inception FID where measured) of teachers against their total training images, a line per
    teacher and measure (nfe None: the series' names say it)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for series in dict.fromkeys(p['series'] for p in points):
        for key, label in (('fd', 'FD-CIFAR'), ('fid', 'FID')):
            pts = [(p['images_total'], p[key]) for p in points if p['series'] == series and key in p]
            if pts:
                ax.plot(*zip(*pts), marker='o', ms=4, label=f'{series}: {label}')
    ax.set_xlabel('teacher training images (all runs)')
    ax.set_ylabel(f'distance to the training images (Heun, {nfe} NFE)' if nfe else 'distance to the training images')
    ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs, path, key='metric_fd_classifier'):
    """Quality vs images seen from runs' log.jsonl files: {label: run_dir} -> one PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, run_dir in runs.items():
        rows = [json.loads(line) for line in (Path(run_dir) / 'log.jsonl').read_text().splitlines() if line.strip()]
        pts = [(r['images_seen'], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), marker='o', ms=3, label=label)
    ax.set_xlabel('images seen by the generator')
    ax.set_ylabel('FD-CIFAR (lower is better)')
    ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
