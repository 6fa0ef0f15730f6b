"""DVC stage `train@MODEL`: `dgm train` for one model of `models` in the params."""

import sys

from dgm.stages.entry import run_stage
from dgm.stages.train import run

if __name__ == "__main__":  # a process pool (forkserver) re-imports this script
    run_stage(run, sys.argv[1])
