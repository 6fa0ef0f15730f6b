"""The ``tune`` section of the params: which models are searched, how, on what resources."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from dgm.errors import DgmError
from dgm.section import Section, Seed
from dgm.tuning.space import Dimension


class TuneConfig(Section):
    """The `tune` stage: which models are searched, how, and on what resources."""

    models: list[str] = Field(default_factory=list)  # keys of `models` searched; others as set
    metric: str | None = None  # null: the family's (fid for GANs, nll_nats …) on the val split
    mode: Literal["min", "max"] | None = None  # null: the metric's registered direction
    num_samples: Annotated[int, Field(gt=0)] = 4  # trials (a grid search runs every point)
    max_concurrent_trials: Annotated[int, Field(gt=0)] = 1
    epochs: Annotated[int, Field(gt=0)] = 4  # per trial: ASHA's max_t
    max_steps: Annotated[int, Field(gt=0)] | None = None
    grace_period: Annotated[int, Field(gt=0)] = 1  # ASHA: epochs before a trial may stop
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    searcher: Literal["optuna", "random", "grid"] = "optuna"  # optuna: TPE
    scheduler: Literal["asha", "fifo"] = "asha"  # fifo: every trial runs all its epochs
    seed: Seed = 0
    num_workers: Annotated[int, Field(ge=1)] = 2  # Ray Train workers per trial
    cpus_per_worker: Annotated[float, Field(gt=0)] = 0.5
    # The trial's driver (a Tune function that waits in ``TorchTrainer.fit``). CPUs held by
    # trial drivers can starve their own workers: after a node is lost, N restarted trials
    # on the remaining CPUs each held theirs while every Train run waited (seen).
    trial_cpus: Annotated[float, Field(ge=0)] = 0.0
    use_gpu: Literal["auto"] | bool = "auto"
    max_failures: Annotated[int, Field(ge=0)] = 2  # retries of a failed trial
    eval_samples: Annotated[int, Field(gt=1)] = 500  # sample metrics: images per epoch
    nll_importance_samples: Annotated[int, Field(gt=0)] = 16  # nll_nats: samples or AIS chains
    nll_max_images: Annotated[int, Field(gt=0)] = 200  # nll_nats: val images scored
    space: dict[str, dict[str, Dimension]] = Field(default_factory=dict)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        from dgm.evaluation.likelihood import check_metric

        if value is not None:
            try:
                check_metric(value)
            except DgmError as exc:
                raise ValueError(str(exc)) from None
        return value
