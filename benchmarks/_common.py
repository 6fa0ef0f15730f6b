"""Helpers shared by the benchmark scripts: the dataset to use and the JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, help="write the figures here as flat JSON")
    return p


def mirror() -> Path | None:
    for candidate in (os.environ.get("DGM_DATA_DIR"), REPO.parent / "shared" / "datasets"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


def prepared(dataset: str, cache: Path) -> Path:
    """Prepare ``dataset`` into ``cache/<dataset>`` once (MNIST needs the IDX mirror)."""
    from dgm.data.parquet import write_dataset
    from dgm.data.sources import load_raw

    out = cache / dataset
    if not (out / "train").is_dir():
        dirs = [mirror()] if mirror() else []
        write_dataset(load_raw(dataset, dirs), out, val_fraction=0.1, test_fraction=0.2,
                      seed=0, shard_rows=20_000)
    return out


def emit(figures: dict, path: Path | None) -> None:
    figures = {**figures, "torch": torch.__version__, "cpu_count": os.cpu_count(),
               "cuda": torch.cuda.is_available(), "machine": platform.machine()}
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
