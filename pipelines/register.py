"""DVC stage `register@MODEL`: `dgm register` for one model of `models` in the params."""

import sys

from dgm.cli import main

main(["register", "--model", sys.argv[1], "--params", "configs/params.yaml"])
