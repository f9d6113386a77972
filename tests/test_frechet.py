"""Frechet distance against direct scipy computations and closed forms; the shipped Fashion-MNIST classifier."""

import numpy as np
import pytest
import scipy.linalg
import torch

from progdistill.evaluation.classifier import FEATURE_DIM, FashionClassifier, feature_stats, load_classifier
from progdistill.evaluation.frechet import frechet_distance, gaussian_stats


def _random_stats(rng: np.random.Generator, d: int):
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)


def _scipy_frechet(mu1, cov1, mu2, cov2) -> float:
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(np.real(covmean)))


@pytest.mark.parametrize("d", [4, 64])
def test_matches_direct_scipy(d):
    rng = np.random.default_rng(d)
    mu1, cov1 = _random_stats(rng, d)
    mu2, cov2 = _random_stats(rng, d)
    expected = _scipy_frechet(mu1, cov1, mu2, cov2)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8, abs=1e-8)


@pytest.mark.parametrize("d", [4, 64])
def test_matches_scipy_on_sample_stats(d):
    rng = np.random.default_rng(100 + d)
    a = rng.standard_normal((500, d)) @ rng.standard_normal((d, d))
    b = 0.5 + rng.standard_normal((400, d)) * rng.uniform(0.5, 2.0, d)
    mu1, cov1 = gaussian_stats(a)
    mu2, cov2 = gaussian_stats(torch.from_numpy(b).float())
    assert mu1.dtype == cov1.dtype == mu2.dtype == cov2.dtype == np.float64
    assert mu1.shape == (d,) and cov1.shape == (d, d)
    np.testing.assert_allclose(cov1, np.cov(a, rowvar=False))
    expected = _scipy_frechet(mu1, cov1, mu2, cov2)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-6)


def test_zero_for_identical_stats():
    rng = np.random.default_rng(1)
    mu, cov = _random_stats(rng, 64)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # a singular (rank-deficient) covariance, as with ReLU features, is fine too
    x = rng.standard_normal((10, 32))
    mu_s, cov_s = gaussian_stats(x)
    assert frechet_distance(mu_s, cov_s, mu_s, cov_s) == pytest.approx(0.0, abs=1e-6)


def test_symmetric():
    rng = np.random.default_rng(2)
    mu1, cov1 = _random_stats(rng, 16)
    mu2, cov2 = _random_stats(rng, 16)
    assert frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(frechet_distance(mu2, cov2, mu1, cov1), rel=1e-10)


def test_diagonal_closed_form():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_shipped_classifier_loads_and_maps_shapes(classifier):
    assert isinstance(classifier, FashionClassifier)
    assert not classifier.training
    assert all(not p.requires_grad for p in classifier.parameters())
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = classifier.features(x)
    logits = classifier(x)
    assert feats.shape == (7, FEATURE_DIM) == (7, 256)
    assert logits.shape == (7, 10)
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()
    # eval mode: features of an image do not depend on the rest of the batch
    torch.testing.assert_close(classifier.features(x[:3]), feats[:3], rtol=1e-5, atol=1e-5)


def test_feature_stats_shapes(classifier):
    x = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mu, cov = feature_stats(x, classifier, batch_size=16)
    assert mu.shape == (256,) and cov.shape == (256, 256)
    assert mu.dtype == cov.dtype == np.float64
    np.testing.assert_allclose(cov, cov.T)
    mu_full, cov_full = feature_stats(x, classifier)
    np.testing.assert_allclose(mu, mu_full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, cov_full, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError):
        feature_stats(torch.zeros(4, 3, 28, 28), classifier)
