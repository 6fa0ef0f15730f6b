"""DVC stage `prepare`: raw dataset (data.name) → Parquet shards."""

from dgm.stages.entry import run_stage
from dgm.stages.prepare import run

run_stage(run)
