"""Fitting the evaluator: the domain classifier (or, for unlabelled data, the feature
autoencoder) trained on the real train split, its reference features and the metric floors
(the real test split scored against train)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from torch.utils.data import TensorDataset

from dgm.data.loading import to_dataset
from dgm.evaluation.classifier import (
    StackedClassifier,
    accuracy,
    reconstruction_error,
    split_stacked,
    train_autoencoder,
    train_classifier,
)
from dgm.evaluation.config import EvaluateConfig, EvaluatorConfig
from dgm.evaluation.reference import reference_and_holdout
from dgm.evaluation.scoring import Evaluator


@dataclass
class FittedEvaluator:
    """A trained feature network, the reference it scores against, and its metrics (test
    accuracy or reconstruction MSE, ``floor_<metric>`` …)."""

    model: Any
    reference: Any
    info: dict[str, Any]
    metrics: dict[str, Any]


def evaluator_version(dataset: str, cfg: EvaluatorConfig, data_fingerprint: str,
                      checksums: dict[str, str]) -> str:
    """``<dataset>-<12 hex>``: a hash of the evaluator's params, the data params and the raw
    files' checksums (what lineage records)."""
    text = cfg.model_dump_json() + data_fingerprint + json.dumps(checksums, sort_keys=True)
    return f"{dataset}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def fit_evaluator(splits: dict, cfg: EvaluatorConfig, evaluate: EvaluateConfig,
                  version: str) -> FittedEvaluator:
    """Train on ``splits["train"]`` (early-stopped on val), score test, build the reference
    from train and the floors from test. A stacked dataset gets one classifier for every
    channel, trained on the channels' digits; an unlabelled one (no class names) gets the
    label-free autoencoder."""
    meta = splits["train"].meta
    tensors = {s: to_dataset(d) for s, d in splits.items()}
    budget = cfg.model_dump()  # epochs, max_steps, batch_size, lr, weight_decay, patience, seed
    if not meta.class_names:
        model, report = train_autoencoder(tensors["train"], tensors["val"], meta.shape_chw,
                                          **budget)
        metrics = {"test_reconstruction_mse": reconstruction_error(model, tensors["test"]),
                   "val_reconstruction_mse": -report.val_accuracy,
                   "best_epoch": report.best_epoch, "epochs_run": report.epochs_run}
    else:
        model, metrics = _fit_classifier(meta, tensors, budget)
    model.version = version
    reference, info, holdout = reference_and_holdout(model, splits["train"], splits["test"])
    floors = Evaluator.from_reference(model, reference, info).score_features(
        holdout, evaluate.metrics, evaluate.metric_options).metrics
    metrics.update({f"floor_{k}": v for k, v in floors.items()})
    return FittedEvaluator(model, reference, info, metrics)


def _fit_classifier(meta, tensors: dict, budget: dict) -> tuple[Any, dict[str, Any]]:
    shape, num_classes = meta.shape_chw, len(meta.class_names)
    fit = tensors
    if meta.stacked:
        num_classes = len(meta.channel_class_names)
        shape = (1, *shape[1:])
        fit = {s: TensorDataset(*split_stacked(*d.tensors, num_classes))
               for s, d in tensors.items()}
    model, report = train_classifier(fit["train"], fit["val"], shape, num_classes, **budget)
    metrics = {"test_accuracy": accuracy(model, fit["test"]),
               "val_accuracy": report.val_accuracy,
               "best_epoch": report.best_epoch, "epochs_run": report.epochs_run}
    if meta.stacked:
        model = StackedClassifier(model, meta.channels)
        metrics["test_mode_accuracy"] = accuracy(model, tensors["test"])
    return model, metrics
