"""Typed configuration: ``configs/params.yaml`` validated by pydantic models.

Unknown keys and wrong types are reported in one line naming the file and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dgm.errors import DgmError
from dgm.evaluation.metrics import METRICS, MetricOptions
from dgm.models.base import ScheduleConfig
from dgm.models.registry import MODEL_CONFIGS, ModelConfig
from dgm.training.loop import EarlyStopping
from dgm.tuning.space import Dimension


class Section(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class StackedConfig(Section):
    """Stacked datasets (``stacked-mnist``): images drawn per split and their seed."""

    train_size: Annotated[int, Field(gt=1)] = 60_000
    test_size: Annotated[int, Field(gt=1)] = 10_000
    seed: int = 0


class DataConfig(Section):
    name: str = "digits"
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2  # datasets without a test split
    seed: int = 0
    shard_rows: Annotated[int, Field(gt=0)] = 20_000
    allow_download: bool = False
    stacked: StackedConfig = StackedConfig()


class EvaluatorConfig(Section):
    epochs: Annotated[int, Field(gt=0)] = 30
    max_steps: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 128
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    patience: Annotated[int, Field(gt=0)] = 5
    seed: int = 0


class TrainConfig(Section):
    epochs: Annotated[int, Field(gt=0)] = 30
    max_steps: Annotated[int, Field(gt=0)] | None = None  # stop at epochs or steps, first hit
    batch_size: Annotated[int, Field(gt=0)] = 64
    num_workers: Annotated[int, Field(ge=1)] = 1
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1.0
    use_gpu: Literal["auto"] | bool = "auto"
    seed: int = 0
    sample_every: Annotated[int, Field(gt=0)] = 5
    max_failures: Annotated[int, Field(ge=0)] = 0
    checkpoints_to_keep: Annotated[int, Field(ge=1)] = 2
    lr_schedule: ScheduleConfig = ScheduleConfig()  # every optimizer, stepped per epoch
    early_stopping: EarlyStopping = EarlyStopping()  # on a validation metric (patience null: off)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA only
    # Ray Train V2 collects worker reports at this interval and each report waits for the
    # previous one to be collected: Ray's default (2 s) caps training at one epoch per 2 s.
    report_interval_s: Annotated[float, Field(gt=0)] = 0.1


class EvaluateConfig(Section):
    num_samples: Annotated[int, Field(gt=1)] = 2000
    seed: int = 123
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


class RegisterConfig(Section):
    metric: str = "fid"
    mode: Literal["min", "max"] = "min"
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class GenerateConfig(Section):
    num_samples: Annotated[int, Field(gt=0)] = 10_000
    batch_size: Annotated[int, Field(gt=0)] = 1000
    seed: int = 7
    shard_size: Annotated[int, Field(gt=0)] = 50_000  # samples per part-NNNNN.parquet
    workers: Annotated[int, Field(gt=0)] = 1  # >1: Ray actors, one model copy each


class TuneConfig(Section):
    """The `tune` stage: which models are searched, how, and on what resources."""

    models: list[str] = Field(default_factory=list)  # keys of `models` searched; others as set
    metric: str | None = None  # null: fid for GANs, nll_nats for likelihood models (val split)
    mode: Literal["min", "max"] = "min"
    num_samples: Annotated[int, Field(gt=0)] = 4  # trials (a grid search runs every point)
    max_concurrent_trials: Annotated[int, Field(gt=0)] = 1
    epochs: Annotated[int, Field(gt=0)] = 4  # per trial: ASHA's max_t
    max_steps: Annotated[int, Field(gt=0)] | None = None
    grace_period: Annotated[int, Field(gt=0)] = 1  # ASHA: epochs before a trial may stop
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    searcher: Literal["optuna", "random", "grid"] = "optuna"  # optuna: TPE
    scheduler: Literal["asha", "fifo"] = "asha"  # fifo: every trial runs all its epochs
    seed: int = 0
    num_workers: Annotated[int, Field(ge=1)] = 2  # Ray Train workers per trial
    cpus_per_worker: Annotated[float, Field(gt=0)] = 0.5
    trial_cpus: Annotated[float, Field(gt=0)] = 1.0  # the trial's driver (a Tune function)
    use_gpu: Literal["auto"] | bool = "auto"
    max_failures: Annotated[int, Field(ge=0)] = 2  # retries of a failed trial
    storage_path: str | None = None  # null: artifacts/ray_results; a URI or shared path
    shared_storage: bool = False  # a local storage_path that every node mounts (NFS)
    eval_samples: Annotated[int, Field(gt=1)] = 500  # sample metrics: images per epoch
    nll_importance_samples: Annotated[int, Field(gt=0)] = 16  # nll_nats: samples or AIS chains
    nll_max_images: Annotated[int, Field(gt=0)] = 200  # nll_nats: val images scored
    space: dict[str, dict[str, Dimension]] = Field(default_factory=dict)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        from dgm.evaluation.validation import check_metric

        if value is not None:
            try:
                check_metric(value)
            except DgmError as exc:
                raise ValueError(str(exc)) from None
        return value


class Params(Section):
    """Everything in ``configs/params.yaml``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    data: DataConfig = DataConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")
    generate: GenerateConfig = GenerateConfig()
    tune: TuneConfig = TuneConfig()

    @field_validator("models", mode="before")
    @classmethod
    def _family_from_name(cls, value: Any) -> Any:
        # ``models: {gan: {...}}`` may omit ``family`` when the key names the family.
        if isinstance(value, dict):
            return {
                key: ({"family": key, **cfg} if isinstance(cfg, dict) and "family" not in cfg
                      and key in MODEL_CONFIGS else cfg)
                for key, cfg in value.items()
            }
        return value

    def model(self, name: str) -> ModelConfig:
        """The config of model ``name`` (a key of ``models``)."""
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise DgmError(f"unknown model {name!r} (configured: {known})") from None

    def search_space(self, name: str) -> dict[str, Dimension]:
        """The search space of model ``name``: ``tune.space.<name>``, else its family's."""
        model = self.model(name)
        space = self.tune.space.get(name, self.tune.space.get(model.family))
        if space is None:
            raise DgmError(f"tune.space has no entry for {name!r} (nor its family "
                           f"{model.family!r})")
        return space

    def check(self) -> None:
        """Checks across sections (one :class:`DgmError` line each)."""
        from dgm.tuning.space import check_space

        known = ", ".join(sorted(self.models)) or "none"
        for name in self.tune.models:
            if name not in self.models:
                raise DgmError(f"tune.models: unknown model {name!r} (configured: {known})")
            where = "tune.space." + (name if name in self.tune.space else self.model(name).family)
            check_space(self.search_space(name), self.model(name), where)
        families = {cfg.family for cfg in self.models.values()} | set(MODEL_CONFIGS)
        for key in self.tune.space:
            if key not in self.models and key not in families:
                raise DgmError(f"tune.space.{key}: neither a model nor a family "
                               f"(models: {known}; families: {', '.join(MODEL_CONFIGS)})")
        if self.tune.grace_period > self.tune.epochs:
            raise DgmError(f"tune.grace_period ({self.tune.grace_period}) exceeds tune.epochs "
                           f"({self.tune.epochs})")


_UNION_MEMBER = re.compile(r"^(literal\[.*\]|bool|int|float|str|none|function-\w+\[.*\])$")


def _user_location(loc: tuple) -> list:
    """Pydantic's error location without union bookkeeping (tags, member types)."""
    out = []
    for i, part in enumerate(loc):
        if i == 2 and loc[0] == "models" and part in MODEL_CONFIGS:
            continue  # the discriminator tag of models.<name>
        if isinstance(part, str) and _UNION_MEMBER.match(part):
            continue
        out.append(part)
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: ``source: key.path: message`` for each problem."""
    parts = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in _user_location(problem["loc"])) or "<root>"
        msg = problem["msg"]
        if problem["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def load_params(path: str | Path = "configs/params.yaml") -> Params:
    """Read and validate the params file; raise :class:`DgmError` with one line on error."""
    path = Path(path)
    if not path.is_file():
        raise DgmError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise DgmError(f"{path}: invalid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise DgmError(f"{path}: expected a mapping at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise DgmError(format_validation_error(exc, str(path))) from None
    try:
        params.check()
    except DgmError as exc:
        raise DgmError(f"{path}: {exc}") from None
    return params
