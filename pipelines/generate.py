"""DVC stage `generate@MODEL`: pull models:/dgm-<dataset>-<model>@champion and sample."""

import sys

from dgm.stages.entry import run_stage
from dgm.stages.generate import run

if __name__ == "__main__":  # a process pool (forkserver) re-imports this script
    run_stage(run, sys.argv[1])
