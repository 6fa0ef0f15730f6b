"""DVC stage `tune@MODEL`: `dgm tune` for one model of `models` (a no-op record when
`tune.models` does not list it)."""

import sys

from dgm.stages.entry import run_stage
from dgm.stages.tune import run

if __name__ == "__main__":  # a process pool (forkserver) re-imports this script
    run_stage(run, sys.argv[1])
