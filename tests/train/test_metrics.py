import pytest
import torch

from train.metrics import ClassifierFeatures, DataReference, frechet_distance, load_features, precision_recall, statistics


def test_frechet_distance_closed_form():
    d = 6
    m = torch.arange(d, dtype=torch.float64)
    # N(0, I) vs N(m, 4I): |m|^2 + tr(I + 4I - 2*2I) = |m|^2 + d
    assert frechet_distance(torch.zeros(d), torch.eye(d), m, 4 * torch.eye(d)) == pytest.approx(float(m @ m) + d)
    a = torch.randn(d, d, dtype=torch.float64)
    s = a @ a.T + torch.eye(d, dtype=torch.float64)
    assert frechet_distance(m, s, m, s) == pytest.approx(0.0, abs=1e-8)


def test_statistics_and_sampled_distance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    mu, sigma = statistics(x)
    torch.testing.assert_close(mu, torch.zeros(4, dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(sigma, torch.eye(4, dtype=torch.float64), atol=0.05, rtol=0)


def test_precision_recall_extremes():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
    p, r = precision_recall(a, b)
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(a, b + 20)
    assert p == 0 and r == 0


class TinyClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Linear(8, 10)

    @torch.jit.export
    def features(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def test_classifier_space_reference_is_cached(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'clf.pt'
    torch.jit.save(torch.jit.script(TinyClassifier()), str(path))
    features = load_features(f'classifier:{path}')
    assert isinstance(features, ClassifierFeatures)
    real = torch.randint(0, 256, (300, 3, 16, 16), dtype=torch.uint8)
    ref = DataReference(features, real, key='toy', cache_dir=tmp_path / 'cache')
    assert len(list((tmp_path / 'cache').glob('*.npz'))) == 1
    cached = DataReference(features, real[:0], key='toy', cache_dir=tmp_path / 'cache')   # nothing to extract: read from disk
    torch.testing.assert_close(cached.mu, ref.mu)
    same = ref.compare(real, 'clf')
    shifted = ref.compare((real.float() * 0.3).to(torch.uint8), 'clf')
    assert same['metric_fd_clf'] < 1e-6 < shifted['metric_fd_clf']
    assert 0 <= same['precision_clf'] <= 1 and 0 <= same['recall_clf'] <= 1
    fd_only = DataReference(features, real, key='toy', cache_dir=tmp_path / 'cache', sample=0)     # as FID keeps it
    assert len(list((tmp_path / 'cache').glob('*.npz'))) == 2 and fd_only.count == 300 and len(fd_only.sample) == 0
    assert DataReference(features, real[:0], key='toy', cache_dir=tmp_path / 'cache', sample=0).cached
    assert fd_only.compare(real, 'clf') == {'metric_fd_clf': pytest.approx(same['metric_fd_clf'], abs=1e-9)}
    with pytest.raises(FileNotFoundError, match='feature network not found'):
        load_features(f'inception:{tmp_path / "missing.pt"}')
