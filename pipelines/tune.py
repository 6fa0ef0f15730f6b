"""DVC stage `tune@MODEL`: `dgm tune` for one model of `models` (a no-op record when
`tune.models` does not list it)."""

import sys

from dgm.cli import main

main(["tune", "--model", sys.argv[1], "--params", "configs/params.yaml"])
