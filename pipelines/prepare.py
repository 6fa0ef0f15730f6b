"""DVC stage `prepare`: raw dataset (data.name) → Parquet shards."""

from dgm.stages.entry import run_stage
from dgm.stages.prepare import run

if __name__ == "__main__":  # a process pool (forkserver) re-imports this script
    run_stage(run)
