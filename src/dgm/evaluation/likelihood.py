"""Likelihoods of real data under models that define one (``nll_nats``).

A model opts in by implementing :class:`LikelihoodModel`: per-image ``log p(x)`` estimates in
nats from ``num_samples`` samples of its estimator — importance samples for the VAE (the IWAE
estimate, a lower bound on log p(x) that tightens as ``num_samples`` grows); an RBM plugs in
its AIS estimate the same way (``num_samples`` then counts AIS chains).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from dgm.errors import DgmError
from dgm.evaluation.metrics import METRICS, register_direction

LIKELIHOOD_METRIC = "nll_nats"
register_direction(LIKELIHOOD_METRIC, f"{LIKELIHOOD_METRIC}_stderr", lower_is_better=True)


def check_metric(metric: str) -> str:
    """``metric`` if a model in training can be scored by it on the val split (a registered
    sample metric, or ``nll_nats``), else a one-line error."""
    if metric != LIKELIHOOD_METRIC and metric not in METRICS:
        raise DgmError(f"unknown validation metric {metric!r} "
                       f"(known: {LIKELIHOOD_METRIC}, {', '.join(METRICS)})")
    return metric


@runtime_checkable
class LikelihoodModel(Protocol):
    """A model whose log-likelihood of images can be estimated."""

    def log_likelihood(self, images: torch.Tensor, num_samples: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Estimated log p(x) in nats, one value per image (float (N, C, H, W) in [0, 1])."""
        ...


def supports_likelihood(model: object) -> bool:
    return isinstance(model, LikelihoodModel)


@torch.no_grad()
def negative_log_likelihood(model: LikelihoodModel, images: torch.Tensor, num_samples: int,
                            seed: int = 0, batch_size: int = 100) -> dict[str, float]:
    """Mean NLL in nats over ``images`` (``nll_nats``) and its standard error."""
    generator = torch.Generator().manual_seed(seed)
    values = [model.log_likelihood(images[start : start + batch_size], num_samples, generator)
              for start in range(0, len(images), batch_size)]
    nll = -torch.cat(values).double().numpy()
    stderr = float(nll.std(ddof=1) / np.sqrt(len(nll))) if len(nll) > 1 else 0.0
    return {"nll_nats": float(nll.mean()), "nll_nats_stderr": stderr}
