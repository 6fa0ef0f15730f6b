"""DVC stage `prepare`: raw dataset (data.name) → Parquet shards."""

from dgm.cli import main

main(["prepare", "--params", "configs/params.yaml"])
