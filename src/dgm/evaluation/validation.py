"""The evaluator's judgement of a model in training, on the val split: what tuning trials
report each epoch (``val_fid`` of samples for GANs, ``val_nll_nats`` for likelihood models).

Sample metrics compare generated images with the val split's images under the evaluator
classifier (the same features and scale as the evaluation stage, a held-out reference);
``nll_nats`` scores the val images under the model's own likelihood estimator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dgm.errors import DgmError
from dgm.evaluation.likelihood import LIKELIHOOD_METRIC, check_metric
from dgm.evaluation.metrics import MetricOptions, Reference, compute
from dgm.training.callbacks import EpochCallback


@dataclass
class ValidationScorer:
    """Scores a model on the val split with one metric; reports ``val_<metric>``."""

    metric: str
    num_samples: int = 500
    seed: int = 0
    importance_samples: int = 16
    options: MetricOptions | None = None
    evaluator: object | None = None  # sample metrics: an Evaluator
    reference: Reference | None = None  # sample metrics: the val split as the metrics see it
    images: torch.Tensor | None = None  # nll_nats: val images, float in [0, 1]

    @classmethod
    def open(cls, metric: str, data_dir: str | Path, evaluator_dir: str | Path | None = None,
             *, num_samples: int = 500, seed: int = 0, importance_samples: int = 16,
             max_images: int = 200, options: MetricOptions | None = None) -> ValidationScorer:
        """A scorer of ``metric`` against the val split of the prepared dataset ``data_dir``
        (sample metrics need the evaluator stage's output ``evaluator_dir``)."""
        from dgm.data.loading import to_float_tensor
        from dgm.data.parquet import read_split

        check_metric(metric)
        val = read_split(data_dir, "val")
        if metric == LIKELIHOOD_METRIC:
            return cls(metric, num_samples, seed, importance_samples, options,
                       images=to_float_tensor(val.images[:max_images]))
        from dgm.evaluation.scoring import Evaluator

        if evaluator_dir is None:
            raise DgmError(f"validation metric {metric} needs the evaluator (run its stage)")
        evaluator = Evaluator.open(evaluator_dir, data_dir)
        real = evaluator.featurize(val.images)
        reference = Reference(features=real.features, probs=real.probs, pixels=real.pixels)
        return cls(metric, num_samples, seed, importance_samples, options, evaluator, reference)

    @property
    def key(self) -> str:
        """The name trials report (and tuning optimises)."""
        return f"val_{self.metric}"

    def __call__(self, model) -> dict[str, float]:
        """``{"val_<metric>": value, …}`` for ``model`` now (same seed every call)."""
        if self.metric == LIKELIHOOD_METRIC:
            from dgm.evaluation.likelihood import negative_log_likelihood, supports_likelihood

            if not supports_likelihood(model):
                raise DgmError(f"{model.family} models have no likelihood: tune them on a "
                               "sample metric such as fid")
            nll = negative_log_likelihood(model, self.images, self.importance_samples,
                                          seed=self.seed)
            return {self.key: nll["nll_nats"]}
        from dgm.models.generator import balanced_labels, sample_uint8

        labels = balanced_labels(model, self.num_samples)
        images = sample_uint8(model, self.num_samples, self.seed, labels)
        values = compute([self.metric], self.reference, self.evaluator.featurize(images),
                         self.options)
        return {f"val_{k}": float(v) for k, v in values.items()}


def local_path(location: Any) -> Path | None:
    """A directory given as a path, or shipped to this worker (anything with
    ``materialize()``, e.g. ``dgm.cluster.ShippedDirectory``)."""
    if location is None:
        return None
    return location.materialize() if hasattr(location, "materialize") else Path(location)


@dataclass
class ValidationCallback(EpochCallback):
    """Adds the evaluator's ``val_<metric>`` to each epoch's metrics on rank 0 (what a
    tuning trial reports); ``scorer``: the keyword arguments of :meth:`ValidationScorer.open`
    (plain data and shipped directories, so the callback travels to Ray workers)."""

    scorer: dict[str, Any] = field(default_factory=dict)  # directories: paths or shipped

    def setup(self, rank: int, world_size: int) -> bool:
        if rank != 0:
            return False
        options = self.scorer.get("options")
        self._scorer = ValidationScorer.open(**{
            **self.scorer, "data_dir": local_path(self.scorer["data_dir"]),
            "evaluator_dir": local_path(self.scorer.get("evaluator_dir")),
            "options": MetricOptions.model_validate(options) if options else None})
        return True

    def on_epoch_end(self, model, epoch: int, metrics: dict[str, float], final: bool) -> None:
        metrics.update(self._scorer(model))
