"""DVC stage `report`: markdown table comparing the evaluated models of the dataset."""

from dgm.stages.entry import run_stage
from dgm.stages.report import run

run_stage(run)
