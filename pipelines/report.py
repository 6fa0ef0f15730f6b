"""DVC stage `report`: markdown table comparing the evaluated models of the dataset."""

from dgm.cli import main

main(["evaluate", "--report", "--params", "configs/params.yaml"])
