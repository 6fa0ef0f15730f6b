"""Search spaces from the params: one dimension per hyperparameter of a model family.

In ``configs/params.yaml`` (``tune.space.<family or model key>.<hyperparameter>``)::

    lr_g: {loguniform: [1.0e-4, 1.0e-3]}
    loss: {choice: [nonsaturating, hinge]}
    width: {randint: [16, 64]}      # integers low..high, both included
    beta: {uniform: [0.5, 4.0]}

Names are checked against the family's typed config, and every bound and choice must be a
value the config accepts, so a bad space fails before any trial starts.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dgm.errors import DgmError
from dgm.models.base import ModelConfigBase

KINDS = ("loguniform", "uniform", "randint", "choice")


class Dimension(BaseModel):
    """One hyperparameter's range: exactly one of the kinds in :data:`KINDS`."""

    model_config = ConfigDict(extra="forbid")

    loguniform: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one_nonempty_range(self) -> Dimension:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)}")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("empty choice")
        else:
            low, high = getattr(self, kind)
            if not low < high:
                raise ValueError(f"empty or inverted range [{low}, {high}] (low must be < high)")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    def values_to_check(self) -> list[Any]:
        """The values whose validity proves the whole range valid (bounds or choices)."""
        return list(self.choice) if self.kind == "choice" else list(getattr(self, self.kind))

    def grid(self) -> list[Any]:
        """The finite values of a grid search (choices and integer ranges only)."""
        if self.kind == "choice":
            return list(self.choice)
        if self.kind == "randint":
            low, high = self.randint
            return list(range(low, high + 1))
        raise DgmError(f"a grid search needs finite dimensions; {self.kind} is continuous")

    def to_tune(self):
        """The Ray Tune sampler of this dimension."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.choice))
        if self.kind == "randint":
            low, high = self.randint
            return tune.randint(low, high + 1)  # Tune's upper bound is exclusive
        return getattr(tune, self.kind)(*getattr(self, self.kind))


SearchSpace = dict[str, Dimension]


def check_space(space: SearchSpace, base: ModelConfigBase, where: str) -> None:
    """One-line errors for unknown hyperparameters and values the model config refuses."""
    if not space:
        raise DgmError(f"{where}: the search space is empty")
    known = sorted(set(type(base).model_fields) - {"family"})
    for name, dim in space.items():
        if name not in known:
            raise DgmError(f"{where}.{name}: unknown hyperparameter of {base.family} "
                           f"(known: {', '.join(known)})")
        for value in dim.values_to_check():
            try:
                apply_overrides(base, {name: value})
            except DgmError as exc:
                raise DgmError(f"{where}.{name}: {value!r} is not accepted: {exc}") from None


def apply_overrides(base: ModelConfigBase, overrides: dict[str, Any]) -> ModelConfigBase:
    """``base`` with ``overrides`` applied, validated as a whole."""
    try:
        return type(base).model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<config>'}: {e['msg']}"
                             for e in exc.errors())
        raise DgmError(problems) from None


def to_param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune samplers keyed by hyperparameter name."""
    return {name: dim.to_tune() for name, dim in space.items()}


def grid_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination of a finite space, in a fixed order."""
    names = sorted(space)
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(space[n].grid() for n in names))]
