"""DVC stage `evaluator`: train the domain classifier that judges every model."""

from dgm.cli import main

main(["evaluator", "--params", "configs/params.yaml"])
