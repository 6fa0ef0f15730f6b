"""DVC stage `report`: markdown table comparing the evaluated models of the dataset."""

from dgm.stages.entry import run_stage
from dgm.stages.report import run

if __name__ == "__main__":  # a process pool (forkserver) re-imports this script
    run_stage(run)
