"""Quality metrics, registered by name, computed in the evaluator's feature space."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import linalg


@dataclass
class FeatureSet:
    """Evaluator outputs for a set of images: features (N, D) and class probabilities (N, K)."""

    features: np.ndarray
    probs: np.ndarray

    @property
    def class_histogram(self) -> np.ndarray:
        """Share of images assigned to each class (argmax)."""
        counts = np.bincount(self.probs.argmax(1), minlength=self.probs.shape[1])
        return counts / max(1, counts.sum())


MetricFn = Callable[[FeatureSet, FeatureSet], float]
METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn(real, generated) -> float`` under ``name``."""

    def decorate(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return decorate


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)."""
    diff = mu1 - mu2
    covmean = np.atleast_2d(linalg.sqrtm(np.atleast_2d(sigma1 @ sigma2)))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = np.atleast_2d(linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset)))
    covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


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


@register_metric("fid")
def fid(real: FeatureSet, gen: FeatureSet) -> float:
    """Fréchet distance between Gaussians fitted to evaluator features."""
    return frechet_distance(real.features.mean(0), np.cov(real.features, rowvar=False),
                            gen.features.mean(0), np.cov(gen.features, rowvar=False))


@register_metric("class_entropy")
def class_entropy(real: FeatureSet, gen: FeatureSet) -> float:
    """Entropy (nats) of the generated class histogram; log K when all classes are even."""
    return entropy(gen.class_histogram)


@register_metric("class_kl")
def class_kl(real: FeatureSet, gen: FeatureSet) -> float:
    """KL(generated ‖ real) of the class histograms (mode collapse makes it grow)."""
    return kl_divergence(gen.class_histogram, real.class_histogram)


@register_metric("modes_covered")
def modes_covered(real: FeatureSet, gen: FeatureSet) -> float:
    """Number of classes that at least one generated image is assigned to."""
    return float((gen.class_histogram > 0).sum())


def compute(names: list[str] | None, real: FeatureSet, gen: FeatureSet) -> dict[str, float]:
    """The named metrics (all registered ones by default)."""
    names = list(METRICS) if names is None else names
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        from dgm.errors import DgmError

        raise DgmError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
    return {name: METRICS[name](real, gen) for name in names}
