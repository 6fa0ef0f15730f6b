"""DVC stage `train@MODEL`: `dgm train` for one model of `models` in the params."""

import sys

from dgm.cli import main

main(["train", "--model", sys.argv[1], "--params", "configs/params.yaml"])
