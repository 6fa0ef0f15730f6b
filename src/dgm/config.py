"""The params file: ``configs/params.yaml`` assembled from each package's section model,
read from YAML and checked across sections; errors are one line naming the file and key.

Each section's model lives with the package it configures (``dgm.data.config``,
``dgm.training.config``, ``dgm.tuning.config``, ``dgm.evaluation.config``,
``dgm.generation.config``, ``dgm.tracking.config``, ``dgm.storage`` for ``cluster``; a model
family's beside its module).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from dgm.data.config import DataConfig
from dgm.errors import DgmError
from dgm.evaluation.config import EvaluateConfig, EvaluatorConfig
from dgm.generation.config import GenerateConfig
from dgm.models.registry import MODEL_CONFIGS, ModelConfig
from dgm.paths import plain_name
from dgm.section import Section
from dgm.storage import ClusterConfig
from dgm.tracking.config import RegisterConfig
from dgm.training.config import TrainConfig
from dgm.tuning.config import TuneConfig
from dgm.tuning.space import Dimension, check_space


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
    cluster: ClusterConfig = ClusterConfig()

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
        known = ", ".join(sorted(self.models)) or "none"
        plain_name(self.data.name, "data.name")
        for name in self.models:
            plain_name(name, "models: key")
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
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise DgmError(f"{path}: invalid YAML: {first}") from None
    except UnicodeDecodeError as exc:
        raise DgmError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DgmError(f"{path}: not readable ({exc.strerror or exc})") from None
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
