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


def evaluator(dataset: str, cache: Path):
    """The pipeline's evaluator for ``dataset`` (configs/params.yaml settings), trained once
    into ``cache/project-<dataset>`` and reused: (the Evaluator, the prepared dataset dir)."""
    from dgm.config import load_params
    from dgm.evaluation.scoring import Evaluator
    from dgm.stages.evaluator import run as train_evaluator
    from dgm.stages.layout import layout
    from dgm.stages.prepare import run as prepare

    if mirror() is not None:
        os.environ.setdefault("DGM_DATA_DIR", str(mirror()))
    params = load_params(REPO / "configs" / "params.yaml")
    params.data.name = dataset
    root = cache / f"project-{dataset}"
    lay = layout(params, root)
    if not (lay.evaluator_dir / "classifier.pt").is_file():
        if not (lay.data_dir / "train").is_dir():
            prepare(params, root=root)
        train_evaluator(params, root=root)
    return Evaluator.open(lay.evaluator_dir, lay.data_dir), lay.data_dir


def train_for_budget(model, loader, minutes: float, on_epoch=None, log_every: int = 10):
    """Train through the shared loop until ``minutes`` are spent (the last epoch cut short
    at the pace so far); ``on_epoch(epoch, seconds_so_far)`` runs after each epoch.
    Returns (last history row, epochs, steps, wall seconds)."""
    import time

    from dgm.training.loop import train_epochs

    started = time.perf_counter()
    deadline = started + 60 * minutes
    epochs, steps, row = 0, 0, {}
    while time.perf_counter() < deadline:
        epochs += 1
        elapsed = time.perf_counter() - started
        left = 10 ** 9 if steps == 0 else max(1, int((deadline - started - elapsed)
                                                      / (elapsed / steps)))
        history = train_epochs(model, loader, epochs=epochs, start_epoch=epochs - 1,
                               start_step=steps, max_steps=steps + left, log=None)
        row = history[-1]
        steps = int(row["step"])
        if on_epoch is not None:
            on_epoch(epochs, time.perf_counter() - started)
        if epochs % log_every == 0:
            print(f"epoch {epochs} step {steps}",
                  {k: round(v, 3) for k, v in row.items() if "seconds" not in k}, flush=True)
    return row, epochs, steps, time.perf_counter() - started


def score_samples(model, dataset: str, cache: Path, num_samples: int, keys, suffix: str = ""):
    """``keys`` metrics of ``num_samples`` samples under the pipeline's evaluator of
    ``dataset``, as figures named ``<key><suffix>``; a conditional model is asked for every
    class alike and also gets ``label_accuracy``."""
    from dgm.models.generator import balanced_labels

    judge, _ = evaluator(dataset, cache)
    labels = balanced_labels(model, num_samples)
    images = sample_images(model, num_samples, seed=0, labels=labels)
    scored = judge.score(images, list(keys)).metrics
    if labels is not None:
        scored["label_accuracy"] = judge.label_accuracy(images, labels)
    return {f"{k}{suffix}": round(float(v), 4) for k, v in scored.items()}


def sample_images(model, num_samples: int, seed: int = 0, batch_size: int = 1000,
                  labels=None):
    """uint8 (N, H, W, C) samples of a dgm model, drawn in seeded batches (of ``labels``
    for a conditional model)."""
    import numpy as np

    from dgm.models.generator import batch_seed, sample_uint8

    model.eval()
    return np.concatenate([
        sample_uint8(model, min(batch_size, num_samples - start), batch_seed(seed, i),
                     None if labels is None else labels[start : start + batch_size])
        for i, start in enumerate(range(0, num_samples, batch_size))])
