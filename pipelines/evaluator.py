"""DVC stage `evaluator`: train the domain classifier that judges every model."""

from dgm.cli import run_stage

run_stage(["evaluator", "--params", "configs/params.yaml"])
