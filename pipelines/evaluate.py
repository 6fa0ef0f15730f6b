"""DVC stage `evaluate@MODEL`: `dgm evaluate` for one model of `models` in the params."""

import sys

from dgm.cli import main

main(["evaluate", "--model", sys.argv[1], "--params", "configs/params.yaml"])
