"""The base of every params section: a pydantic model in which unknown keys are errors."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1  # NumPy's legacy RandomState (Optuna's samplers) takes no more
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="a random seed: 0 .. 2**32 - 1")]


class Section(BaseModel):
    """A config section: unknown keys are errors, and so are inf and nan."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
