"""FID and FD-CIFAR of a teacher chain against its total training images, from the records `sida train evaluate
--record` wrote into each link's sida.json (the zoo keeps each earlier link's in models/zoo/runs/, since a continued
teacher replaces the folder it came from). Each number counts only where measured with the same classifier (FD-CIFAR)
or Inception weights (FID) as the newest link that has a number of its kind.

    python train/recipes/teacher_progress.py models/zoo/teacher-progress.png \\
        models/zoo/runs/cifar10-cond-teacher-*.sida.json models/zoo/cifar10-cond-teacher/sida.json
"""

import argparse
import json
from pathlib import Path

from train.evaluate import MEASURED_WITH, plot_teacher_progress, recorded_at


def points(records, nfe):
    """[{series, name, images_total, fd?, fid?}] of the records at `nfe`, each number in the feature space of the
    newest record that has one of its kind."""
    last = {}       # what each number was last measured with: a link measured without FID keeps the others' FIDs
    for _, config in records:
        metrics = config['provenance'].get('metrics') or {}
        last.update({m: metrics[m] for m in MEASURED_WITH.values() if m in metrics})
    out = []
    for path, config in records:
        provenance = config['provenance']
        values = recorded_at(provenance.get('metrics', {}), nfe, last)
        total = provenance.get('images_total', provenance.get('images_seen'))
        if values and total is not None:
            out.append({'series': f'{config["name"]}, Heun {nfe} NFE', 'name': str(path), 'images_total': int(total), **values})
    return sorted(out, key=lambda p: p['images_total'])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out', type=Path, help='PNG to write (and the points beside it as .json)')
    parser.add_argument('records', nargs='+', type=Path, help="the links' sida.json files, any order")
    parser.add_argument('--nfe', default='35,17', help='network evaluations per image to plot')
    a = parser.parse_args()
    records = sorted(((p, json.loads(p.read_text())) for p in a.records),
                     key=lambda r: r[1]['provenance'].get('images_total', r[1]['provenance'].get('images_seen', 0)))
    nfes = [int(n) for n in a.nfe.split(',')]
    pts = [p for nfe in nfes for p in points(records, nfe)]
    if not pts:
        raise SystemExit('no recorded FID or FD-CIFAR in these files (evaluate the teachers with --record)')
    a.out.parent.mkdir(parents=True, exist_ok=True)
    plot_teacher_progress(pts, a.out, nfes[0] if len(nfes) == 1 else None)
    a.out.with_suffix('.json').write_text(json.dumps(pts, indent=2) + '\n')
    for p in pts:
        print(f"{p['series']}: {p['images_total']:,} images: " + ', '.join(f'{k} {p[k]}' for k in ('fid', 'fd') if k in p))


if __name__ == '__main__':
    main()
