"""DVC stage `evaluator`: train the domain classifier that judges every model."""

from dgm.stages.entry import run_stage
from dgm.stages.evaluator import run

run_stage(run)
