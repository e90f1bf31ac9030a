"""train/recipes/teacher_progress.py: a teacher chain's recorded numbers against its total training images."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def record(path, name, total, fid=None, fd=None, classifier='c1', inception='i1'):
    metrics = {'classifier_sha256': classifier, 'fid_weights': inception, 'images_total': total}
    metrics.update({'fid_nfe35': fid} if fid is not None else {})
    metrics.update({'fd_cifar_nfe35': fd} if fd is not None else {})
    path.write_text(json.dumps({'name': name, 'provenance': {'images_total': total, 'metrics': metrics}}))
    return path


def test_points_follow_the_chain_in_the_last_links_feature_spaces(tmp_path):
    files = [record(tmp_path / 'b.json', 't', 5_000_000, fid=11.3, fd=20.7),
             record(tmp_path / 'a.json', 't', 2_000_000, fid=17.4, fd=30.4),
             record(tmp_path / 'old.json', 't', 1_000_000, fid=25.0, fd=40.0, classifier='c0'),   # another classifier
             record(tmp_path / 'none.json', 't', 500_000)]                                       # never evaluated
    out = tmp_path / 'progress.png'
    r = subprocess.run([sys.executable, 'train/recipes/teacher_progress.py', str(out), *map(str, files), '--nfe', '35'],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stderr
    pts = json.loads(out.with_suffix('.json').read_text())
    assert [(p['images_total'], p.get('fid'), p.get('fd')) for p in pts] == [
        (1_000_000, 25.0, None), (2_000_000, 17.4, 30.4), (5_000_000, 11.3, 20.7)]    # FD of c0 left out, its FID kept
    assert out.stat().st_size > 0

    # a newest link not evaluated yet does not hide the others; FID under other Inception weights is left out
    files.append(record(tmp_path / 'new.json', 't', 8_000_000))
    files.append(record(tmp_path / 'other.json', 't', 3_000_000, fid=14.0, fd=25.0, inception='i0'))
    out = tmp_path / 'sub' / 'progress.png'
    r = subprocess.run([sys.executable, 'train/recipes/teacher_progress.py', str(out), *map(str, files), '--nfe', '35'],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stderr
    pts = json.loads(out.with_suffix('.json').read_text())
    assert [(p['images_total'], p.get('fid'), p.get('fd')) for p in pts] == [
        (1_000_000, 25.0, None), (2_000_000, 17.4, 30.4), (3_000_000, None, 25.0), (5_000_000, 11.3, 20.7)]

    # a newest link measured without FID (FD-CIFAR only, no Inception named) keeps the earlier links' FIDs
    fd_only = record(tmp_path / 'fd-only.json', 't', 9_000_000, fd=17.7)
    metrics = json.loads(fd_only.read_text())
    del metrics['provenance']['metrics']['fid_weights']
    fd_only.write_text(json.dumps(metrics))
    r = subprocess.run([sys.executable, 'train/recipes/teacher_progress.py', str(out), *map(str, files + [fd_only]),
                        '--nfe', '35'], cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stderr
    pts = json.loads(out.with_suffix('.json').read_text())
    assert [(p['images_total'], p.get('fid'), p.get('fd')) for p in pts] == [
        (1_000_000, 25.0, None), (2_000_000, 17.4, 30.4), (3_000_000, None, 25.0), (5_000_000, 11.3, 20.7),
        (9_000_000, None, 17.7)]


def test_no_recorded_numbers_is_a_one_line_error(tmp_path):
    f = record(tmp_path / 'none.json', 't', 500_000)
    r = subprocess.run([sys.executable, 'train/recipes/teacher_progress.py', str(tmp_path / 'p.png'), str(f)],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 1 and 'evaluate the teachers with --record' in r.stderr
