"""Metrics in closed form: Fréchet distance, entropy, KL, class-histogram metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dgm.errors import DgmError
from dgm.evaluation.metrics import (
    METRICS,
    FeatureSet,
    class_entropy,
    class_kl,
    compute,
    entropy,
    fid,
    frechet_distance,
    kl_divergence,
    modes_covered,
)


def one_hot(labels, k=10) -> np.ndarray:
    return np.eye(k)[np.asarray(labels)]


def feature_set(features, labels=None, k=10) -> FeatureSet:
    features = np.asarray(features, dtype=np.float64)
    labels = np.zeros(len(features), int) if labels is None else labels
    return FeatureSet(features, one_hot(labels, k))


def random_spd(rng, d) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


# --- Fréchet distance ----------------------------------------------------------------------
def test_frechet_equal_covariance_is_squared_mean_distance():
    rng = np.random.default_rng(0)
    mu1, mu2, sigma = rng.normal(size=8), rng.normal(size=8), random_spd(rng, 8)
    expected = float(((mu1 - mu2) ** 2).sum())
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(expected, rel=1e-8)


def test_frechet_of_commuting_covariances():
    # Diagonal covariances: sum of (sqrt(a) - sqrt(b))^2 per dimension.
    a, b = np.array([4.0, 1.0, 9.0]), np.array([9.0, 1.0, 1.0])
    mu = np.zeros(3)
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())  # 1 + 0 + 4
    assert expected == 5.0
    assert frechet_distance(mu, np.diag(a), mu, np.diag(b)) == pytest.approx(5.0, rel=1e-9)


def test_frechet_is_symmetric_and_zero_on_itself():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = random_spd(rng, 5), random_spd(rng, 5)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1), rel=1e-8)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, s2) > 0


def test_frechet_of_one_dimensional_features():
    # N(0, 4) vs N(0, 9): (2 - 3)^2 = 1.
    assert frechet_distance(np.zeros(1), np.eye(1) * 4, np.zeros(1), np.eye(1) * 9) == (
        pytest.approx(1.0))


def test_fid_from_large_samples_matches_closed_form():
    rng = np.random.default_rng(2)
    n, shift = 20_000, np.array([1.0, 0.0, 0.0, 0.5])
    real = feature_set(rng.normal(size=(n, 4)))
    gen = feature_set(rng.normal(size=(n, 4)) + shift)
    # Equal (identity) covariances: ‖shift‖² = 1.25, up to sampling error.
    assert fid(real, gen) == pytest.approx(1.25, abs=0.1)


def test_fid_of_identical_features_is_zero():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(500, 32)) * rng.uniform(0.5, 3, size=32) + 7
    scale = np.trace(np.cov(features, rowvar=False))
    value = fid(feature_set(features), feature_set(features.copy()))
    assert abs(value) < 1e-6 * scale


def test_fid_grows_with_noise():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(3000, 16))
    real = feature_set(base)
    values = []
    for sigma in (0.25, 1.0, 2.0):
        noisy = base + sigma * rng.normal(size=base.shape)
        values.append(fid(real, feature_set(noisy)))
        # Cov ≈ I vs (1+σ²)I: d (sqrt(1+σ²) − 1)².
        expected = 16 * (math.sqrt(1 + sigma**2) - 1) ** 2
        assert values[-1] == pytest.approx(expected, rel=0.15, abs=0.02)
    assert values[0] < values[1] < values[2]


# --- entropy and KL ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 10, 37])
def test_entropy_of_uniform_is_log_k(k):
    assert entropy(np.full(k, 1 / k)) == pytest.approx(math.log(k), abs=1e-12)


def test_entropy_of_one_hot_is_zero():
    assert entropy(np.array([0.0, 1.0, 0.0])) == 0.0


def test_entropy_known_value():
    # H(1/2, 1/4, 1/4) = 1.5 ln 2.
    assert entropy([0.5, 0.25, 0.25]) == pytest.approx(1.5 * math.log(2), rel=1e-12)


def test_kl_of_identical_histograms_is_zero():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)


def test_kl_two_bins_by_hand():
    # KL((1/2, 1/2) ‖ (9/10, 1/10)) = ½ ln(5/9) + ½ ln 5 = ln(5/3).
    assert kl_divergence([0.5, 0.5], [0.9, 0.1]) == pytest.approx(math.log(5 / 3), abs=1e-5)
    # KL((1, 0) ‖ (1/2, 1/2)) = ln 2 (the 0 log 0 term vanishes).
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2), abs=1e-4)


def test_kl_is_finite_with_empty_bins_and_asymmetric():
    value = kl_divergence([0.5, 0.5], [1.0, 0.0])
    assert math.isfinite(value) and value > 5  # smoothing keeps it finite but large
    assert kl_divergence([0.5, 0.5], [0.9, 0.1]) != pytest.approx(
        kl_divergence([0.9, 0.1], [0.5, 0.5]))


# --- class-histogram metrics ---------------------------------------------------------------
def test_class_histogram():
    fs = feature_set(np.zeros((5, 2)), labels=[0, 0, 3, 9, 9])
    assert fs.class_histogram.tolist() == pytest.approx([0.4, 0, 0, 0.2, 0, 0, 0, 0, 0, 0.4])


def test_one_class_generated_set():
    real = feature_set(np.zeros((100, 2)), labels=np.arange(100) % 10)
    gen = feature_set(np.zeros((50, 2)), labels=np.full(50, 3))
    assert modes_covered(real, gen) == 1.0
    assert class_entropy(real, gen) == 0.0
    assert class_kl(real, gen) > 2  # ≈ ln 10 = 2.30
    assert class_kl(real, gen) == pytest.approx(math.log(10), abs=1e-3)


def test_balanced_generated_set():
    real = feature_set(np.zeros((100, 2)), labels=np.arange(100) % 10)
    gen = feature_set(np.zeros((30, 2)), labels=np.arange(30) % 10)
    assert modes_covered(real, gen) == 10.0
    assert class_entropy(real, gen) == pytest.approx(math.log(10))
    assert class_kl(real, gen) == pytest.approx(0.0, abs=1e-9)


def test_compute_all_and_named():
    rng = np.random.default_rng(5)
    real = feature_set(rng.normal(size=(200, 3)), labels=np.arange(200) % 10)
    gen = feature_set(rng.normal(size=(200, 3)), labels=np.arange(200) % 5)
    values = compute(None, real, gen)
    assert set(values) == set(METRICS) == {"fid", "class_entropy", "class_kl", "modes_covered"}
    assert values["modes_covered"] == 5.0
    assert values["class_entropy"] == pytest.approx(math.log(5))
    assert compute(["modes_covered"], real, gen) == {"modes_covered": 5.0}


def test_compute_unknown_metric():
    fs = feature_set(np.zeros((3, 2)))
    with pytest.raises(DgmError, match="unknown metric.*inception_score"):
        compute(["fid", "inception_score"], fs, fs)
