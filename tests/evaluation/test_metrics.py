"""Metrics against closed forms and hand computations.

Metric functions take ``(real, generated, options)`` and return a float or a dict of values;
``compute`` flattens them into one dict.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import linalg

from dgm.errors import DgmError
from dgm.evaluation.metrics import (
    CLASS_METRICS,
    DIRECTIONS,
    METRICS,
    FeatureSet,
    MetricOptions,
    Reference,
    class_entropy,
    class_kl,
    compute,
    entropy,
    fid,
    frechet_distance,
    inception_score_from_probs,
    kernel_inception_distance,
    kid,
    kl_divergence,
    knn_radii,
    memorization,
    mode_kl,
    modes_covered,
    nearest_distances,
    not_applicable,
    pairwise_distances,
    polynomial_mmd2,
    prdc,
    register_metric,
    sliced_wasserstein,
    swd,
)

OPTIONS = MetricOptions()


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
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize(("m1", "v1", "m2", "v2"),
                         [(0.0, 4.0, 0.0, 9.0), (1.0, 1.0, -2.0, 0.25), (3.0, 2.0, 3.5, 2.0)])
def test_frechet_of_one_dimensional_gaussians(m1, v1, m2, v2):
    expected = (m1 - m2) ** 2 + (math.sqrt(v1) - math.sqrt(v2)) ** 2
    # Scalars and 1-element arrays are both accepted.
    assert frechet_distance(m1, v1, m2, v2) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert frechet_distance(np.array([m1]), np.array([[v1]]), np.array([m2]),
                            np.array([[v2]])) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_frechet_of_diagonal_covariances():
    a, b = np.array([4.0, 1.0, 9.0, 0.25]), np.array([9.0, 1.0, 1.0, 4.0])
    mu1, mu2 = np.array([1.0, 0.0, 0.0, 2.0]), np.zeros(4)
    expected = 5.0 + float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())  # 5 + (1 + 0 + 4 + 2.25)
    assert expected == pytest.approx(12.25)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(12.25, rel=1e-10)


def test_frechet_matches_matrix_square_root_for_general_covariances():
    rng = np.random.default_rng(7)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = random_spd(rng, 6), random_spd(rng, 6)
    root = linalg.sqrtm(s1)
    expected = (((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                - 2 * np.trace(linalg.sqrtm(root @ s2 @ root).real))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_of_singular_covariances():
    # Rank-one covariances u uᵀ and v vᵀ: Tr((Σ₁Σ₂)^½) = |u·v|.
    u, v = np.array([1.0, 2.0, 0.0, -1.0]), np.array([0.5, -1.0, 3.0, 2.0])
    mu = np.zeros(4)
    expected = u @ u + v @ v - 2 * abs(u @ v)
    value = frechet_distance(mu, np.outer(u, u), mu, np.outer(v, v))
    assert math.isfinite(value)
    # √ of the numerically-zero eigenvalues (~1e-15) costs ~1e-8 absolute.
    assert value == pytest.approx(expected, rel=1e-6)
    # A zero-variance dimension in both: only the others count.
    a, b = np.diag([4.0, 0.0, 1.0]), np.diag([1.0, 0.0, 1.0])
    assert frechet_distance(np.zeros(3), a, np.ones(3), b) == pytest.approx(3.0 + 1.0, rel=1e-9)
    # A point mass against N(0, I_3): ‖μ‖² + Tr I = 3.
    assert frechet_distance(np.zeros(3), np.zeros((3, 3)), np.zeros(3),
                            np.eye(3)) == pytest.approx(3.0, rel=1e-12)


def test_frechet_is_symmetric_and_zero_on_itself():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = random_spd(rng, 5), random_spd(rng, 5)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, s2) > 0


# --- fid -----------------------------------------------------------------------------------
def test_fid_from_large_samples_matches_closed_form():
    rng = np.random.default_rng(2)
    n = 20_000
    std_real, std_gen = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.0, 1.0, 1.0, 3.0])
    shift = np.array([1.0, 0.0, 0.0, 0.5])
    real = FeatureSet(rng.normal(size=(n, 4)) * std_real)
    gen = FeatureSet(rng.normal(size=(n, 4)) * std_gen + shift)
    expected = shift @ shift + ((std_real - std_gen) ** 2).sum()  # 1.25 + 1 + .25 + 4 = 6.5
    assert expected == pytest.approx(6.5)
    # Sampling error of the mean term ~ 2‖shift‖·σ/√n and of the trace term ~ Σσ²·√(2/n):
    # both ≲ 0.1 here.
    assert fid(real, gen, OPTIONS) == pytest.approx(expected, abs=0.15)


def test_fid_of_identical_features_is_zero():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(500, 32)) * rng.uniform(0.5, 3, size=32) + 7
    value = fid(FeatureSet(features), FeatureSet(features.copy()), OPTIONS)
    assert abs(value) < 1e-8 * np.trace(np.cov(features, rowvar=False))


def test_fid_of_one_dimensional_features():
    rng = np.random.default_rng(4)
    real = FeatureSet(rng.normal(size=(20_000, 1)))
    gen = FeatureSet(rng.normal(size=(20_000, 1)) * 2 + 1)
    assert fid(real, gen, OPTIONS) == pytest.approx(1.0 + 1.0, abs=0.1)


# --- KID -----------------------------------------------------------------------------------
def brute_force_mmd2(x, y) -> float:
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_polynomial_mmd2_matches_brute_force():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)) + 0.7
    expected = brute_force_mmd2(x, y)
    assert polynomial_mmd2(x, y) == pytest.approx(expected, rel=1e-10)
    assert polynomial_mmd2(y, x) == pytest.approx(expected, rel=1e-10)


def test_polynomial_mmd2_by_hand_in_one_dimension():
    # d = 1, x = (0, 1), y = (2, 3): k(a, b) = (ab + 1)³.
    x, y = np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]])
    kxx = 1.0  # k(0, 1)
    kyy = 7.0 ** 3  # k(2, 3)
    kxy = (1 + 1 + 27 + 64) / 4  # k(0,2), k(0,3), k(1,2), k(1,3)
    assert polynomial_mmd2(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)


def test_kid_of_identical_distributions_is_near_zero():
    rng = np.random.default_rng(6)
    real, gen = FeatureSet(rng.normal(size=(600, 8))), FeatureSet(rng.normal(size=(600, 8)))
    options = MetricOptions(kid_subset_size=200, kid_subsets=20)
    values = kid(real, gen, options)
    assert set(values) == {"kid", "kid_std"}
    assert values["kid_std"] > 0
    assert abs(values["kid"]) < 3 * values["kid_std"]
    # A shifted distribution is far outside that band.
    shifted = kid(real, FeatureSet(gen.features + 1.0), options)
    assert shifted["kid"] > 10 * values["kid_std"]


def test_kid_std_is_zero_for_one_subset_and_nonnegative():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 0.5
    mean, std = kernel_inception_distance(x, y, subset_size=20, subsets=1, seed=0)
    assert std == 0.0
    mean, std = kernel_inception_distance(x, y, subset_size=20, subsets=5, seed=0)
    assert std > 0
    # Subsets larger than the sets: the full sets, in some order, every time.
    mean, std = kernel_inception_distance(x, y, subset_size=1000, subsets=3, seed=0)
    assert mean == pytest.approx(polynomial_mmd2(x, y), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9 * abs(mean))


def test_kid_is_seeded():
    rng = np.random.default_rng(8)
    real, gen = FeatureSet(rng.normal(size=(200, 6))), FeatureSet(rng.normal(size=(200, 6)))
    a = kid(real, gen, MetricOptions(kid_subset_size=50, kid_subsets=5, seed=1))
    b = kid(real, gen, MetricOptions(kid_subset_size=50, kid_subsets=5, seed=1))
    c = kid(real, gen, MetricOptions(kid_subset_size=50, kid_subsets=5, seed=2))
    assert a == b
    assert a["kid"] != c["kid"]


def test_kid_needs_two_samples():
    with pytest.raises(DgmError, match="at least 2"):
        kid(FeatureSet(np.zeros((1, 3))), FeatureSet(np.ones((5, 3))), OPTIONS)


def test_fid_and_kid_grow_with_noise():
    # The generated features are the real ones plus Gaussian noise (the same draw scaled):
    # Cov ≈ I vs (1 + σ²) I, so fid ≈ d (√(1 + σ²) − 1)². The generated set holds noisy copies
    # of the real points, which biases the unbiased KID estimate slightly below 0 for small σ;
    # it still grows with σ.
    rng = np.random.default_rng(9)
    d = 16
    base, noise = rng.normal(size=(400, d)), rng.normal(size=(400, d))
    real = FeatureSet(base)
    options = MetricOptions(kid_subset_size=200, kid_subsets=10)
    fids, kids = [], []
    for sigma in (0.1, 0.3, 1.0):
        gen = FeatureSet(base + sigma * noise)
        fids.append(fid(real, gen, options))
        kids.append(kid(real, gen, options)["kid"])
        expected = d * (math.sqrt(1 + sigma**2) - 1) ** 2
        assert fids[-1] == pytest.approx(expected, rel=0.3, abs=0.05)
    assert fids[0] < fids[1] < fids[2]
    assert kids[0] < kids[1] < kids[2]
    assert kids[2] > 0.05


# --- precision / recall / density / coverage -----------------------------------------------
def test_knn_radii_and_distances_by_hand():
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(points, 1).tolist() == pytest.approx([1.0, 1.0, 2.0, 4.0])
    assert knn_radii(points, 2).tolist() == pytest.approx([3.0, 2.0, 3.0, 6.0])
    dist = pairwise_distances(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]]))
    assert dist.dtype == np.float32 and dist.tolist() == [[5.0, 1.0]]
    near = nearest_distances(np.array([[0.0, 0.0], [3.0, 3.0]]),
                             np.array([[3.0, 4.0], [0.0, 1.0]]))
    assert near.tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_of_identical_sets(k):
    rng = np.random.default_rng(10)
    points = rng.normal(size=(80, 4))
    values = prdc(points, points.copy(), k)
    assert values["precision"] == 1.0
    assert values["recall"] == 1.0
    assert values["coverage"] == 1.0
    # Each real ball holds its own copy and its k nearest neighbours.
    assert values["density"] == pytest.approx((k + 1) / k, rel=1e-12)


def test_prdc_of_far_apart_sets_is_zero():
    rng = np.random.default_rng(11)
    real, gen = rng.normal(size=(60, 3)), rng.normal(size=(50, 3)) + 100
    assert prdc(real, gen, 3) == {"precision": 0.0, "recall": 0.0, "density": 0.0,
                                  "coverage": 0.0}


def test_prdc_of_a_tight_subset_of_one_mode():
    # Real data: two clusters; generated: a tight blob in the middle of one of them.
    rng = np.random.default_rng(12)
    real = np.concatenate([rng.normal(-5, 1, (100, 2)), rng.normal(5, 1, (100, 2))])
    gen = rng.normal(5, 0.3, (50, 2))
    values = prdc(real, gen, 3)
    assert values["precision"] >= 0.95
    assert values["recall"] <= 0.4
    assert values["coverage"] <= 0.4  # at most the half it sits in, in fact much less
    assert values["density"] > 0.5


def test_prdc_metric_uses_options_k():
    rng = np.random.default_rng(13)
    fs = FeatureSet(rng.normal(size=(60, 3)))
    for k in (1, 4):
        values = compute(["density"], fs, FeatureSet(fs.features.copy()), MetricOptions(k=k))
        assert set(values) == {"precision", "recall", "density", "coverage"}
        assert values["density"] == pytest.approx((k + 1) / k, rel=1e-12)


def test_prdc_subsamples_to_max_samples():
    rng = np.random.default_rng(14)
    real, gen = FeatureSet(rng.normal(size=(300, 3))), FeatureSet(rng.normal(size=(300, 3)))
    options = MetricOptions(prdc_max_samples=20, k=2)
    values = compute(["precision"], real, gen, options)
    # Shares of 20 subsampled points are multiples of 1/20.
    for key in ("precision", "recall", "coverage"):
        assert values[key] * 20 == pytest.approx(round(values[key] * 20), abs=1e-9)
    assert values["density"] * 2 * 20 == pytest.approx(round(values["density"] * 40), abs=1e-9)


def test_prdc_needs_more_than_k_samples():
    rng = np.random.default_rng(15)
    small, large = rng.normal(size=(3, 2)), rng.normal(size=(30, 2))
    with pytest.raises(DgmError, match="k=3"):
        prdc(small, large, 3)
    with pytest.raises(DgmError, match="k=3"):
        prdc(large, small, 3)
    with pytest.raises(DgmError):
        compute(["recall"], FeatureSet(large), FeatureSet(small), MetricOptions(k=5))


# --- sliced Wasserstein --------------------------------------------------------------------
@pytest.mark.parametrize("d", [2, 5])
def test_swd_of_a_shift(d):
    # Projections of x + v are those of x shifted by θ·v, so each 1-D W1 is |θ·v|, and the mean
    # over uniform unit θ is ‖v‖ E|θ₁| with E|θ₁| = Γ(d/2) / (√π Γ((d+1)/2)).
    rng = np.random.default_rng(16)
    x = rng.normal(size=(100, d))
    v = rng.normal(size=d)
    expected = np.linalg.norm(v) * math.gamma(d / 2) / (math.sqrt(math.pi)
                                                        * math.gamma((d + 1) / 2))
    value = sliced_wasserstein(x, x + v, projections=4000, seed=0)
    assert value == pytest.approx(expected, rel=0.03)


def test_swd_in_one_dimension_is_wasserstein_distance():
    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([[1.0], [1.0], [5.0]])
    # Sorted couplings 0→1, 1→1, 2→5: (1 + 0 + 3) / 3.
    assert sliced_wasserstein(x, y, projections=3, seed=0) == pytest.approx(4 / 3, rel=1e-12)


def test_swd_of_identical_sets_is_zero_and_seeded():
    rng = np.random.default_rng(17)
    x, y = rng.normal(size=(80, 6)), rng.normal(size=(90, 6)) * 1.5
    assert sliced_wasserstein(x, x.copy(), 16, seed=0) == 0.0
    a = sliced_wasserstein(x, y, 16, seed=3)
    assert a == sliced_wasserstein(x, y, 16, seed=3)
    assert a != sliced_wasserstein(x, y, 16, seed=4)
    assert a > 0


def test_swd_metric_reports_pixels_only_when_both_sets_have_them():
    rng = np.random.default_rng(18)
    feats = rng.normal(size=(40, 4))
    pixels = rng.uniform(size=(40, 16))
    options = MetricOptions(swd_projections=8)
    both = swd(FeatureSet(feats, pixels=pixels), FeatureSet(feats + 1, pixels=pixels * 0.5),
               options)
    assert set(both) == {"swd", "swd_pixel"}
    assert both["swd"] > 0 and both["swd_pixel"] > 0
    assert both["swd_pixel"] == sliced_wasserstein(pixels, pixels * 0.5, 8, options.seed)
    assert both["swd"] == sliced_wasserstein(feats, feats + 1, 8, options.seed)
    one = swd(FeatureSet(feats, pixels=pixels), FeatureSet(feats + 1), options)
    assert set(one) == {"swd"}
    assert one["swd"] == both["swd"]
    assert set(swd(FeatureSet(feats), FeatureSet(feats, pixels=pixels), options)) == {"swd"}
    assert set(compute(["swd_pixel"], FeatureSet(feats, pixels=pixels),
                       FeatureSet(feats, pixels=pixels), options)) == {"swd", "swd_pixel"}


# --- inception score -----------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 5, 10])
def test_inception_score_of_even_one_hot_posteriors_is_k(k):
    probs = one_hot(np.arange(3 * k) % k, k)
    assert inception_score_from_probs(probs) == pytest.approx(k, rel=1e-9)


def test_inception_score_of_identical_posteriors_is_one():
    probs = np.tile([0.2, 0.5, 0.3], (7, 1))
    assert inception_score_from_probs(probs) == pytest.approx(1.0, abs=1e-12)
    assert inception_score_from_probs(one_hot(np.full(5, 2), 4)) == pytest.approx(1.0)


def test_inception_score_in_between():
    rng = np.random.default_rng(19)
    probs = rng.dirichlet(np.full(6, 0.5), size=200)
    value = inception_score_from_probs(probs)
    assert 1.0 < value < 6.0
    # Half the images one-hot on class 0, half on class 1 of K = 4: IS = 2.
    assert inception_score_from_probs(one_hot([0, 1, 0, 1], 4)) == pytest.approx(2.0)


def test_class_metrics_are_not_applicable_without_probs():
    rng = np.random.default_rng(0)
    fs = FeatureSet(rng.normal(size=(40, 2)))
    names = [n for n in METRICS if n != "memorization"]  # it needs held-out distances
    assert set(compute(names, fs, fs, MetricOptions(kid_subset_size=10, kid_subsets=2))) == {
        "fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "swd"}
    assert compute(["inception_score", "class_kl"], fs, fs) == {}
    assert not_applicable(None, fs, fs) == [
        "class_entropy", "class_kl", "mode_kl", "modes_covered", "inception_score"]
    assert sorted(CLASS_METRICS) == sorted(not_applicable(None, fs, fs))
    gen = FeatureSet(np.zeros((6, 2)), probs=one_hot(np.arange(6) % 3, 3))
    assert compute(["inception_score"], fs, gen) == {
        "inception_score": pytest.approx(3.0, rel=1e-9)}


# --- entropy and KL ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 10, 37])
def test_entropy_of_uniform_is_log_k(k):
    assert entropy(np.full(k, 1 / k)) == pytest.approx(math.log(k), abs=1e-12)


def test_entropy_known_values():
    assert entropy(np.array([0.0, 1.0, 0.0])) == 0.0
    # H(1/2, 1/4, 1/4) = 1.5 ln 2.
    assert entropy([0.5, 0.25, 0.25]) == pytest.approx(1.5 * math.log(2), rel=1e-12)


def test_kl_of_identical_histograms_is_zero():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)


def test_kl_by_hand():
    # KL((1/2, 1/2) ‖ (9/10, 1/10)) = ½ ln(5/9) + ½ ln 5 = ln(5/3).
    assert kl_divergence([0.5, 0.5], [0.9, 0.1]) == pytest.approx(math.log(5 / 3), abs=1e-5)
    # KL((1, 0) ‖ (1/2, 1/2)) = ln 2 (the 0 log 0 term vanishes).
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2), abs=1e-4)
    # Without smoothing the value is exact; unnormalised counts are normalised.
    assert kl_divergence([2, 1, 1], [1, 1, 2], eps=0) == pytest.approx(
        0.5 * math.log(2) + 0.25 * math.log(1) + 0.25 * math.log(0.5), rel=1e-12)


def test_kl_is_finite_with_empty_bins_and_asymmetric():
    value = kl_divergence([0.5, 0.5], [1.0, 0.0])
    # ½ ln(½ / 1e-6) dominates: ≈ 6.2 nats.
    assert math.isfinite(value) and value == pytest.approx(
        0.5 * math.log(0.5 / 1e-6) + 0.5 * math.log(0.5), rel=1e-4)
    assert kl_divergence([0.5, 0.5], [0.9, 0.1]) != pytest.approx(
        kl_divergence([0.9, 0.1], [0.5, 0.5]))


# --- class-histogram metrics ---------------------------------------------------------------
def test_class_histogram():
    fs = feature_set(np.zeros((5, 2)), labels=[0, 0, 3, 9, 9])
    assert fs.class_histogram.tolist() == pytest.approx([0.4, 0, 0, 0.2, 0, 0, 0, 0, 0, 0.4])


def test_histogram_overrides_probs():
    hist = np.array([0.5, 0.5, 0.0])
    fs = FeatureSet(np.zeros((4, 2)), probs=one_hot([2, 2, 2, 2], 3), histogram=hist)
    assert fs.class_histogram is hist
    real = FeatureSet(np.zeros((4, 2)), histogram=np.array([0.5, 0.5, 0.0]))
    assert modes_covered(real, fs, OPTIONS) == 2.0
    assert class_entropy(real, fs, OPTIONS) == pytest.approx(math.log(2))
    assert class_kl(real, fs, OPTIONS) == pytest.approx(0.0, abs=1e-12)


def test_class_metrics_need_probs_or_histogram():
    fs = FeatureSet(np.zeros((4, 2)))
    with pytest.raises(DgmError, match="class probabilities"):
        _ = fs.class_histogram
    assert compute(["modes_covered"], fs, fs) == {}  # not applicable, never a zero


def test_one_class_generated_set():
    real = feature_set(np.zeros((100, 2)), labels=np.arange(100) % 10)
    gen = feature_set(np.zeros((50, 2)), labels=np.full(50, 3))
    assert modes_covered(real, gen, OPTIONS) == 1.0
    assert class_entropy(real, gen, OPTIONS) == 0.0
    # class_kl is KL(generated ‖ real): one class of ten even ones gives ln 10.
    # (eps = 1e-6 smoothing of the nine empty bins costs ~1e-4.)
    assert class_kl(real, gen, OPTIONS) == pytest.approx(math.log(10), abs=1e-3)
    assert mode_kl(real, gen, OPTIONS) == pytest.approx(math.log(10), abs=1e-3)


def test_class_kl_of_a_class_missing_from_real_data_is_large():
    # All generated images in a class the real data never has: ln(1 / ~1e-6) ≈ 13.8 nats.
    real = feature_set(np.zeros((100, 2)), labels=np.arange(100) % 5)
    gen = feature_set(np.zeros((50, 2)), labels=np.full(50, 7))
    assert class_kl(real, gen, OPTIONS) > 5
    assert class_kl(real, gen, OPTIONS) == pytest.approx(math.log(1 / 1e-6), rel=0.01)


def test_balanced_generated_set():
    real = feature_set(np.zeros((100, 2)), labels=np.arange(100) % 10)
    gen = feature_set(np.zeros((30, 2)), labels=np.arange(30) % 10)
    assert modes_covered(real, gen, OPTIONS) == 10.0
    assert class_entropy(real, gen, OPTIONS) == pytest.approx(math.log(10))
    assert class_kl(real, gen, OPTIONS) == pytest.approx(0.0, abs=1e-9)
    assert mode_kl(real, gen, OPTIONS) == pytest.approx(0.0, abs=1e-12)


def test_mode_kl_ignores_real_data_and_measures_unevenness():
    real = feature_set(np.zeros((10, 2)), labels=np.full(10, 0), k=2)
    gen = FeatureSet(np.zeros((4, 2)), histogram=np.array([0.75, 0.25]))
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert mode_kl(real, gen, OPTIONS) == pytest.approx(expected, rel=1e-4)


# --- memorization --------------------------------------------------------------------------
def memorization_reference(rng, n=200, d=5) -> tuple[Reference, np.ndarray]:
    """Train features, and held-out features of the same distribution with their distances."""
    train, holdout = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    ref = Reference(train, holdout_nn_distances=nearest_distances(holdout, train))
    return ref, holdout


def test_memorization_of_copies_is_one():
    rng = np.random.default_rng(20)
    ref, _ = memorization_reference(rng)
    copies = FeatureSet(ref.features[rng.choice(len(ref.features), 50)])
    assert memorization(ref, copies, OPTIONS) == 1.0


def test_memorization_of_distant_samples_is_zero():
    rng = np.random.default_rng(21)
    ref, _ = memorization_reference(rng)
    far = FeatureSet(rng.normal(size=(50, 5)) + 50)
    assert memorization(ref, far, OPTIONS) == 0.0


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8])
def test_memorization_of_held_out_data_is_the_quantile(quantile):
    rng = np.random.default_rng(22)
    ref, holdout = memorization_reference(rng, n=400)
    options = MetricOptions(memorization_quantile=quantile)
    # The held-out set itself: the share below its own quantile, up to one sample.
    assert memorization(ref, FeatureSet(holdout), options) == pytest.approx(quantile, abs=0.01)
    # A fresh sample of the same distribution: up to binomial noise (sd ≤ 0.025 here).
    fresh = FeatureSet(rng.normal(size=(400, 5)))
    assert memorization(ref, fresh, options) == pytest.approx(quantile, abs=0.1)


def test_memorization_needs_holdout_distances():
    rng = np.random.default_rng(23)
    features = rng.normal(size=(20, 3))
    with pytest.raises(DgmError, match="held-out"):
        memorization(FeatureSet(features), FeatureSet(features), OPTIONS)
    with pytest.raises(DgmError, match="held-out"):
        compute(["memorization"], Reference(features), FeatureSet(features))


# --- compute and the registry --------------------------------------------------------------
def full_sets(rng) -> tuple[Reference, FeatureSet]:
    train, holdout = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    real = Reference(train, probs=one_hot(np.arange(60) % 10), pixels=rng.uniform(size=(60, 9)),
                     holdout_nn_distances=nearest_distances(holdout, train))
    gen = FeatureSet(rng.normal(size=(50, 4)), probs=one_hot(np.arange(50) % 5),
                     pixels=rng.uniform(size=(50, 9)))
    return real, gen


def test_compute_all_registered_metrics():
    real, gen = full_sets(np.random.default_rng(24))
    options = MetricOptions(kid_subset_size=20, kid_subsets=5, swd_projections=16)
    values = compute(None, real, gen, options)
    expected = {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
                "class_entropy", "class_kl", "mode_kl", "modes_covered", "inception_score",
                "swd", "swd_pixel", "memorization"}
    assert set(METRICS) == expected
    assert set(values) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    assert values["modes_covered"] == 5.0
    assert values["class_entropy"] == pytest.approx(math.log(5))
    assert values["mode_kl"] == pytest.approx(math.log(2), abs=1e-4)  # 5 of 10 classes
    assert values["inception_score"] == pytest.approx(5.0, rel=1e-9)
    assert values["fid"] == fid(real, gen, options)


def test_compute_named_subset():
    real, gen = full_sets(np.random.default_rng(25))
    assert compute(["modes_covered"], real, gen) == {"modes_covered": 5.0}
    values = compute(["fid", "class_entropy"], real, gen)
    assert list(values) == ["fid", "class_entropy"]
    assert compute([], real, gen) == {}
    options = MetricOptions(kid_subset_size=20, kid_subsets=3)
    assert set(compute(["kid"], real, gen, options)) == {"kid", "kid_std"}


def test_compute_unknown_metric():
    fs = FeatureSet(np.zeros((3, 2)))
    with pytest.raises(DgmError, match="unknown metric.*no_such_metric"):
        compute(["fid", "no_such_metric"], fs, fs)
    with pytest.raises(DgmError, match="no_such_metric"):
        compute(["no_such_metric"], fs, fs)


def test_companion_keys_are_registered_names_too():
    rng = np.random.default_rng(0)
    real = FeatureSet(rng.normal(size=(40, 3)))
    gen = FeatureSet(rng.normal(size=(40, 3)))
    options = MetricOptions(kid_subset_size=20, kid_subsets=3)
    assert compute(["kid_std"], real, gen, options) == compute(["kid"], real, gen, options)


@pytest.fixture()
def counting_metric():
    calls = []

    def fn(real, gen, options):
        calls.append(options)
        return {"test_a": 1.0, "test_b": 2.0}

    register_metric("test_a", "test_b", lower_is_better=True)(fn)
    try:
        yield calls
    finally:
        for name in ("test_a", "test_b"):
            METRICS.pop(name, None)
            DIRECTIONS.pop(name, None)


def test_compute_calls_a_multi_name_metric_once(counting_metric):
    fs = FeatureSet(np.zeros((3, 2)))
    options = MetricOptions(seed=5)
    assert METRICS["test_a"] is METRICS["test_b"]
    assert compute(["test_a", "test_b"], fs, fs, options) == {"test_a": 1.0, "test_b": 2.0}
    assert counting_metric == [options]
    assert compute(["test_b"], fs, fs) == {"test_a": 1.0, "test_b": 2.0}
    assert len(counting_metric) == 2
    assert counting_metric[1] == MetricOptions()  # default options when none are given


def test_compute_float_metric_is_reported_under_the_asked_name():
    def fn(real, gen, options):
        return 3

    register_metric("test_float", lower_is_better=False)(fn)
    try:
        values = compute(["test_float"], FeatureSet(np.zeros((2, 1))), FeatureSet(np.zeros((2, 1))))
    finally:
        METRICS.pop("test_float", None)
        DIRECTIONS.pop("test_float", None)
    assert values == {"test_float": 3.0} and isinstance(values["test_float"], float)


# --- options -------------------------------------------------------------------------------
def test_metric_options_defaults():
    options = MetricOptions()
    assert (options.k, options.memorization_quantile, options.seed) == (3, 0.5, 0)


@pytest.mark.parametrize("bad", [{"unknown": 1}, {"k": 0}, {"prdc_max_samples": 1},
                                 {"kid_subset_size": 1}, {"kid_subsets": 0},
                                 {"swd_projections": 0}, {"memorization_quantile": 0.0},
                                 {"memorization_quantile": 1.0}, {"k": "many"}])
def test_metric_options_reject_bad_values(bad):
    with pytest.raises(ValidationError):
        MetricOptions(**bad)
