"""Quality metrics, registered by name, computed in the evaluator's feature space.

Each metric is ``fn(real, generated, options) -> float | dict[str, float]`` registered with
:func:`register_metric` under the key(s) it reports; one function may report several keys
(``precision``, ``recall``, ``density``, ``coverage`` share their k-NN distances; ``kid`` adds
``kid_std``), and asking for any of them computes it once. ``real`` is the evaluator's
:class:`Reference` of the train split (features, class histogram, a pixel subsample and
held-out nearest-neighbour distances).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from dgm.errors import DgmError


class MetricOptions(BaseModel):
    """Knobs of the metrics (``evaluate.metric_options`` in the params file)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(3, gt=0, description="neighbours of the k-NN manifolds (precision/recall)")
    prdc_max_samples: int = Field(10_000, gt=1, description="subsample of each set for k-NN")
    kid_subset_size: int = Field(1000, gt=1)
    kid_subsets: int = Field(100, gt=0)
    swd_projections: int = Field(256, gt=0)
    memorization_quantile: float = Field(
        0.5, gt=0, lt=1, description="quantile of held-out→train NN distances used as cutoff")
    seed: int = 0


@dataclass
class FeatureSet:
    """Evaluator outputs for a set of images.

    ``features`` (N, D) penultimate-layer features; ``probs`` (N, K) class posteriors or
    ``histogram`` (K,) when only the class shares are kept; ``pixels`` (N, P) flat images in
    [0, 1] for pixel-space metrics.
    """

    features: np.ndarray
    probs: np.ndarray | None = None
    pixels: np.ndarray | None = None
    histogram: np.ndarray | None = None

    @property
    def class_histogram(self) -> np.ndarray:
        """Share of images assigned to each class (argmax)."""
        if self.histogram is not None:
            return self.histogram
        if self.probs is None:
            raise DgmError("class metrics need class probabilities")
        counts = np.bincount(self.probs.argmax(1), minlength=self.probs.shape[1])
        return counts / max(1, counts.sum())


@dataclass
class Reference(FeatureSet):
    """The real train split as the metrics see it, plus held-out→train NN distances."""

    holdout_nn_distances: np.ndarray | None = None


MetricValue = float | dict[str, float]
MetricFn = Callable[[FeatureSet, FeatureSet, MetricOptions], MetricValue]
METRICS: dict[str, MetricFn] = {}
# metrics of the evaluator's class posteriors: not applicable to unlabelled data
CLASS_METRICS: set[str] = set()
# name → whether lower is better: every registered metric, and the keys other evaluators
# report (``nll_nats``: see :func:`register_direction`).
DIRECTIONS: dict[str, bool] = {}


def register_metric(*names: str, lower_is_better: bool,
                    needs_classes: bool = False) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn(real, generated, options)`` under the metric name(s) it reports, with
    their direction; ``needs_classes``: it reads class posteriors (n/a without labels)."""

    def decorate(fn: MetricFn) -> MetricFn:
        for name in names:
            METRICS[name] = fn
            if needs_classes:
                CLASS_METRICS.add(name)
        register_direction(*names, lower_is_better=lower_is_better)
        return fn

    return decorate


def register_direction(*names: str, lower_is_better: bool) -> None:
    """Record the direction of metric keys (also those computed outside :data:`METRICS`)."""
    for name in names:
        DIRECTIONS[name] = lower_is_better


def lower_is_better(name: str) -> bool | None:
    """Whether a lower ``name`` is better; None for a key of unknown direction."""
    return DIRECTIONS.get(name)


def metric_mode(name: str, default: str = "min") -> str:
    """``min`` or ``max``: how to optimise ``name`` (``default`` when its direction is
    unknown)."""
    direction = lower_is_better(name)
    if direction is None:
        return default
    return "min" if direction else "max"


# --- building blocks ------------------------------------------------------------------------
def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½); Tr (Σ₁Σ₂)^½ is the sum of the square roots of
    the eigenvalues of Σ₁Σ₂ (real and non-negative for PSD Σ, singular ones included)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real
    tr_covmean = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> float:
    """KL(p ‖ q) in nats with additive smoothing ``eps`` on both histograms."""
    p = (np.asarray(p, np.float64) + eps)
    q = (np.asarray(q, np.float64) + eps)
    p, q = p / p.sum(), q / q.sum()
    return float((p * np.log(p / q)).sum())


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic kernel k(a, b) = (a·b / d + 1)³ (KID, Bińkowski 2018)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kernel_inception_distance(x: np.ndarray, y: np.ndarray, subset_size: int, subsets: int,
                              seed: int) -> tuple[float, float]:
    """Mean and standard deviation of :func:`polynomial_mmd2` over random subsets."""
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise DgmError("kid needs at least 2 samples in each set")
    values = [polynomial_mmd2(x[rng.choice(len(x), size, replace=False)],
                              y[rng.choice(len(y), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def pairwise_distances(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) as float32, in chunks."""
    bt = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    out = np.empty((len(a), len(b)), dtype=np.float32)
    for start in range(0, len(a), chunk):
        at = torch.from_numpy(np.ascontiguousarray(a[start:start + chunk], dtype=np.float32))
        out[start:start + chunk] = torch.cdist(at, bt).numpy()
    return out


def nearest_distances(query: np.ndarray, points: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Distance of each query row to its nearest row of ``points`` (float64)."""
    pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    out = []
    for start in range(0, len(query), chunk):
        q = torch.from_numpy(np.ascontiguousarray(query[start:start + chunk], dtype=np.float32))
        out.append(torch.cdist(q, pts).min(dim=1).values)
    return torch.cat(out).double().numpy() if out else np.empty(0)


def knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest other point."""
    if len(points) <= k:
        raise DgmError(f"k-NN metrics need more than k={k} samples, got {len(points)}")
    dist = pairwise_distances(points, points)
    return np.partition(dist, k, axis=1)[:, k]  # index 0 is the point itself


def prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi 2019), density and coverage (Naeem 2020) with k-NN."""
    real_radii = knn_radii(real, k)
    fake_radii = knn_radii(fake, k)
    dist = pairwise_distances(real, fake)  # (N real, M fake)
    inside_real = dist <= real_radii[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((dist <= fake_radii[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum() / (k * dist.shape[1])),
        "coverage": float((dist.min(axis=1) <= real_radii).mean()),
    }


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, projections: int, seed: int) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections."""
    from scipy import stats  # 1 s to import: not on every stage's path through dgm.config

    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(x.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    px, py = x @ directions, y @ directions
    return float(np.mean([stats.wasserstein_distance(px[:, i], py[:, i])
                          for i in range(projections)]))


def inception_score_from_probs(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))) with p(y) the mean posterior."""
    probs = np.asarray(probs, dtype=np.float64)
    marginal = probs.mean(axis=0, keepdims=True)
    kl = (probs * (np.log(probs + eps) - np.log(marginal + eps))).sum(axis=1)
    return float(math.exp(kl.mean()))


def _subsample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))]


def _require(value, what: str):
    if value is None:
        raise DgmError(f"this metric needs {what}")
    return value


# --- registered metrics ---------------------------------------------------------------------
@register_metric("fid", lower_is_better=True)
def fid(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> float:
    """Fréchet distance between Gaussians fitted to evaluator features."""
    return frechet_distance(real.features.mean(0), np.cov(real.features, rowvar=False),
                            gen.features.mean(0), np.cov(gen.features, rowvar=False))


@register_metric("kid", "kid_std", lower_is_better=True)
def kid(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> dict[str, float]:
    """Unbiased KID: mean and std of cubic-kernel MMD² over random subsets."""
    mean, std = kernel_inception_distance(real.features, gen.features, options.kid_subset_size,
                                          options.kid_subsets, options.seed)
    return {"kid": mean, "kid_std": std}


@register_metric("precision", "recall", "density", "coverage", lower_is_better=False)
def precision_recall_density_coverage(real: FeatureSet, gen: FeatureSet,
                                      options: MetricOptions) -> dict[str, float]:
    """``precision``, ``recall``, ``density``, ``coverage`` on k-NN manifolds of features."""
    n = options.prdc_max_samples
    return prdc(_subsample(real.features, n, options.seed),
                _subsample(gen.features, n, options.seed + 1), options.k)


@register_metric("class_entropy", lower_is_better=False, needs_classes=True)
def class_entropy(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> float:
    """Entropy (nats) of the generated class histogram; log K when all classes are even."""
    return entropy(gen.class_histogram)


@register_metric("class_kl", lower_is_better=True, needs_classes=True)
def class_kl(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> float:
    """KL(generated ‖ real) of the class histograms (mode collapse makes it grow)."""
    return kl_divergence(gen.class_histogram, real.class_histogram)


@register_metric("mode_kl", lower_is_better=True, needs_classes=True)
def mode_kl(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> float:
    """KL(generated ‖ uniform) of the class (mode) histogram; 0 when every mode is even."""
    hist = gen.class_histogram
    return kl_divergence(hist, np.full(len(hist), 1.0 / len(hist)))


@register_metric("modes_covered", lower_is_better=False, needs_classes=True)
def modes_covered(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> float:
    """Number of classes (modes) that at least one generated image is assigned to."""
    return float((gen.class_histogram > 0).sum())


@register_metric("inception_score", lower_is_better=False, needs_classes=True)
def inception_score(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> float:
    """The Inception Score formula with the evaluator's class posterior (1 … K)."""
    return inception_score_from_probs(_require(gen.probs, "class probabilities"))


@register_metric("swd", "swd_pixel", lower_is_better=True)
def swd(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> dict[str, float]:
    """Sliced Wasserstein distance in feature space (``swd``) and pixel space (``swd_pixel``)."""
    values = {"swd": sliced_wasserstein(real.features, gen.features, options.swd_projections,
                                        options.seed)}
    if real.pixels is not None and gen.pixels is not None:
        values["swd_pixel"] = sliced_wasserstein(real.pixels, gen.pixels,
                                                 options.swd_projections, options.seed)
    return values


@register_metric("memorization", lower_is_better=True)
def memorization(real: FeatureSet, gen: FeatureSet, options: MetricOptions) -> float:
    """Share of generated samples nearer their nearest training image than held-out data are.

    The cutoff is the ``memorization_quantile`` of held-out→train nearest-neighbour distances
    (features), so held-out real images score that quantile (0.5 by default); a model that
    copies its training images scores 1.
    """
    holdout = _require(getattr(real, "holdout_nn_distances", None),
                       "held-out nearest-neighbour distances")
    cutoff = np.quantile(holdout, options.memorization_quantile)
    return float((nearest_distances(gen.features, real.features) < cutoff).mean())


def has_classes(features: FeatureSet) -> bool:
    """Whether the evaluator gave these images class posteriors (or a class histogram)."""
    return features.probs is not None or (features.histogram is not None
                                          and len(features.histogram) > 0)


def not_applicable(names: list[str] | None, real: FeatureSet, gen: FeatureSet) -> list[str]:
    """The named metrics (default: all) that need classes the evaluator did not give the
    generated images (a label-free evaluator)."""
    if has_classes(gen):
        return []
    return [n for n in (list(METRICS) if names is None else names) if n in CLASS_METRICS]


def compute(names: list[str] | None, real: FeatureSet, gen: FeatureSet,
            options: MetricOptions | None = None) -> dict[str, float]:
    """The named metrics (all registered ones by default) as one flat dict; class metrics
    are left out when the evaluator has no classes (:func:`not_applicable`)."""
    options = options or MetricOptions()
    names = list(METRICS) if names is None else list(names)
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise DgmError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
    skipped = set(not_applicable(names, real, gen))
    names = [n for n in names if n not in skipped]
    out: dict[str, float] = {}
    done: set[int] = set()
    for name in names:
        fn = METRICS[name]
        if id(fn) in done:
            continue
        done.add(id(fn))
        value = fn(real, gen, options)
        out.update(value if isinstance(value, dict) else {name: float(value)})
    return out
