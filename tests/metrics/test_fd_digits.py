"""Frechet distance (closed forms) and the FD-digits proxy's sanity checks."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from diffusion.data.digits import load_digits
from diffusion.metrics.fd_digits import fd_digits
from diffusion.metrics.frechet import feature_stats, frechet_distance, psd_sqrt


def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.0]), np.array([4.0, 1.0, 9.0])  # one singular covariance
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_rotated_and_rank_deficient():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    v1, v2 = np.array([3, 2, 1, 0, 0, 0.0]), np.array([1, 1, 1, 1, 0, 0.0])
    s1, s2 = q @ np.diag(v1) @ q.T, q @ np.diag(v2) @ q.T  # commuting, both singular
    fd = frechet_distance(np.zeros(6), s1, np.zeros(6), s2)
    assert fd == pytest.approx(np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2), abs=1e-6)
    assert frechet_distance(np.zeros(6), s1, np.zeros(6), s1) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(psd_sqrt(s1) @ psd_sqrt(s1), s1, atol=1e-10)


def test_feature_stats_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 4)))


@pytest.fixture(scope="module")
def train_split():
    return load_digits("train")


def test_heldout_vs_train_is_small(train_split):
    x, y = train_split
    r = fd_digits(x, y)
    assert r["fd_digits"] < 3.0
    assert r["class_accuracy"] > 0.97


def test_corrupted_sets_are_far(train_split):
    x, y = train_split
    rng = np.random.default_rng(0)
    assert fd_digits(gaussian_filter(x, sigma=(0, 1, 1, 0)))["fd_digits"] > 30  # blurred
    assert fd_digits(rng.uniform(-1, 1, size=(1000, 8, 8, 1)).astype(np.float32))["fd_digits"] > 30  # noise
    assert fd_digits(x[y == 3])["fd_digits"] > 30  # one class: mode collapse
    # class accuracy catches samples that show the wrong digit
    assert fd_digits(x, (y + 1) % 10)["class_accuracy"] < 0.05


def test_16x16_samples_are_pooled_to_8x8(train_split):
    x16, _ = load_digits("train", 16)
    assert fd_digits(x16)["fd_digits"] == pytest.approx(fd_digits(train_split[0])["fd_digits"], rel=1e-6)


def test_the_shipped_classifier_is_named_by_its_recipe_and_checked():
    from diffusion.metrics import digits_classifier
    from diffusion.metrics.param_cache import cache_path, sha256_of

    assert digits_classifier.SHIPPED.name == cache_path("fd_digits_cnn", digits_classifier.RECIPE).name
    assert sha256_of(digits_classifier.SHIPPED) == digits_classifier.SHIPPED_SHA256
