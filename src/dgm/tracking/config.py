"""The ``register`` section of the params: the gate between a candidate and ``champion``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dgm.section import Section


class RegisterConfig(Section):
    metric: str = "fid"
    # null: the metric's registered direction (fid, nll_nats: min; precision: max …)
    mode: Literal["min", "max"] | None = None
    min_delta: Annotated[float, Field(ge=0)] = 0.0
