"""The ``generate`` section of the params: the `generate` stage's batch generation."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dgm.section import Section, Seed


class GenerateConfig(Section):
    num_samples: Annotated[int, Field(gt=0)] = 10_000
    batch_size: Annotated[int, Field(gt=0)] = 1000
    seed: Seed = 7
    shard_size: Annotated[int, Field(gt=0)] = 50_000  # samples per part-NNNNN.parquet
    workers: Annotated[int, Field(gt=0)] = 1  # >1: Ray actors, one model copy each
