"""DVC stage `evaluator`: train the domain classifier that judges every model."""

from dgm.stages.entry import run_stage
from dgm.stages.evaluator import run

if __name__ == "__main__":  # a process pool (forkserver) re-imports this script
    run_stage(run)
