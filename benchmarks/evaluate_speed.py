"""Scoring speed: ``dgm evaluate`` of 10 000 MNIST images with every metric.

``seconds``: wall time of the whole command (process start, imports, evaluator and reference
load, sample loading, features, all metrics, JSON). ``featurize_s`` and ``<metric>_s``: the
same work in-process, step by step. The evaluator is trained briefly (--evaluator-steps):
scoring speed does not depend on its accuracy.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, mirror, parser, prepared

from dgm.data.loading import load_split_tensors
from dgm.data.parquet import read_meta, read_split
from dgm.evaluation.classifier import save_classifier, train_classifier
from dgm.evaluation.metrics import METRICS, MetricOptions
from dgm.evaluation.reference import REFERENCE_FILE, build_reference, save_reference
from dgm.evaluation.scoring import Evaluator


def evaluator_dir(data: Path, out: Path, steps: int) -> Path:
    if not (out / REFERENCE_FILE).is_file():
        meta = read_meta(data / "train")
        model, _ = train_classifier(
            load_split_tensors(data, "train"), load_split_tensors(data, "val"), meta.shape_chw,
            len(meta.class_names), epochs=1, batch_size=64, lr=3e-3, weight_decay=1e-4,
            patience=1, seed=0, max_steps=steps, log=None)
        model.version = f"bench-{steps}"
        save_classifier(model, out / "classifier.pt", model.version)
        save_reference(*build_reference(model, data), out / REFERENCE_FILE)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--evaluator-steps", type=int, default=300)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgm-bench")
    args = p.parse_args()
    dataset = "mnist" if mirror() else "digits"
    data = prepared(dataset, args.cache)
    evaluator = evaluator_dir(data, args.cache / f"evaluator-{dataset}", args.evaluator_steps)
    test = read_split(data, "test").images
    images = test[np.arange(args.num_samples) % len(test)]
    samples = args.cache / f"samples-{dataset}.npz"
    np.savez(samples, images=images)

    with tempfile.TemporaryDirectory() as cwd:  # outside any project: only --evaluator
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "dgm"), "evaluate", "--dataset",
                        dataset, "--samples", str(samples), "--evaluator", str(evaluator),
                        "--output", str(Path(cwd) / "metrics.json")], cwd=cwd, check=True,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started

    figures = {"dataset": dataset, "num_samples": len(images), "seconds": round(seconds, 2)}
    started = time.perf_counter()
    scorer = Evaluator.open(evaluator)
    figures["load_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    gen = scorer.featurize(images)
    figures["featurize_s"] = round(time.perf_counter() - started, 3)
    for fn in dict.fromkeys(METRICS.values()):
        started = time.perf_counter()
        fn(scorer.reference, gen, MetricOptions())
        figures[f"{fn.__name__}_s"] = round(time.perf_counter() - started, 3)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
