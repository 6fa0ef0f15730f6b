"""DVC stage `prepare`: raw dataset (data.name) → Parquet shards."""

from dgm.cli import run_stage

run_stage(["prepare", "--params", "configs/params.yaml"])
