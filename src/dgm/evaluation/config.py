"""The ``evaluator`` and ``evaluate`` sections of the params."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from dgm.evaluation.metrics import METRICS, MetricOptions
from dgm.section import Section, Seed


class EvaluatorConfig(Section):
    epochs: Annotated[int, Field(gt=0)] = 30
    max_steps: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 128
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    patience: Annotated[int, Field(gt=0)] = 5
    seed: Seed = 0


class EvaluateConfig(Section):
    num_samples: Annotated[int, Field(gt=1)] = 2000
    seed: Seed = 123
    metrics: list[str] | None = None  # registered metric names; None: all of them
    metric_options: MetricOptions = MetricOptions()
    nll_importance_samples: Annotated[int, Field(gt=0)] = 64  # likelihood models only
    nll_max_images: Annotated[int, Field(gt=0)] = 1000  # of the test split

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("list at least one metric (or null for all)")
        unknown = sorted(set(value or ()) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)} "
                             f"(known: {', '.join(METRICS)})")
        return value
