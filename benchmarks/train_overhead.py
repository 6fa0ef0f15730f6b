"""Training throughput through Ray Train (1 worker) against a bare PyTorch loop.

Same model (the pipeline's DCGAN), data, batch size, epochs and steps, in one run; the bare
loop runs before and after Ray's (averaged). ``ratio`` = Ray images/s ÷ bare images/s in
steady state (epochs 2..N; Ray's time includes its per-epoch checkpoint and report);
``ratio_wall`` compares whole runs, Ray's start-up included.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, mirror, parser
from torch.utils.data import DataLoader

from dgm.config import load_params
from dgm.data.loading import load_split_tensors
from dgm.data.parquet import write_dataset
from dgm.data.sources import load_raw
from dgm.models.registry import build_model
from dgm.training import ray_train
from dgm.training.config import TrainConfig
from dgm.training.loop import train_epochs

REPO = Path(__file__).resolve().parents[1]


def subset(dataset: str, images: int, cache: Path) -> Path:
    out = cache / f"{dataset}-{images}"
    if not (out / "train").is_dir():
        raw = load_raw(dataset, [mirror()] if mirror() else [])
        raw.train_images, raw.train_labels = raw.train_images[:images], raw.train_labels[:images]
        write_dataset(raw, out, val_fraction=0.1, test_fraction=0.2, seed=0, shard_rows=20_000)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=8000, help="train images (before val split)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--report-interval", type=float, default=TrainConfig().report_interval_s)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgm-bench")
    args = p.parse_args()
    dataset = "mnist" if mirror() else "digits"
    data_dir = subset(dataset, args.images, args.cache)
    model_cfg = load_params(REPO / "configs" / "params.yaml").model("gan")
    shape = (1, 28, 28) if dataset == "mnist" else (1, 8, 8)

    def bare_run() -> list[dict[str, float]]:
        """The same model, loop and loader, without Ray."""
        model = build_model(model_cfg, shape, seed=0).setup()
        loader = DataLoader(load_split_tensors(data_dir, "train"), batch_size=args.batch_size,
                            shuffle=True, drop_last=True)
        torch.manual_seed(0)
        return train_epochs(model, loader, epochs=args.epochs, log=None)

    def steady_s(history: list[dict[str, float]]) -> float:
        """Seconds for epochs 2..N (warm-up excluded), callbacks of epochs 1..N-1 included."""
        return history[-1]["elapsed_seconds"] - history[0]["elapsed_seconds"]

    bare_before = bare_run()
    cpus = float(torch.get_num_threads())
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, num_workers=1,
                            cpus_per_worker=cpus, use_gpu="auto", max_failures=0,
                            report_interval_s=args.report_interval)
    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        ray_history, _ = ray_train.fit(dataset_dir=data_dir, model_config=model_cfg,
                                       train_config=train_cfg, storage_path=storage,
                                       run_name="overhead")
        ray_wall_s = time.perf_counter() - started
    bare_after = bare_run()  # bare runs on both sides of Ray's, against drift

    steps = int(bare_before[-1]["step"])
    assert int(ray_history[-1]["step"]) == steps
    steady_images = (steps - int(bare_before[0]["step"])) * args.batch_size
    bare_s = (steady_s(bare_before) + steady_s(bare_after)) / 2
    ray_s = steady_s(ray_history)
    bare_total_s = (bare_before[-1]["elapsed_seconds"] + bare_after[-1]["elapsed_seconds"]) / 2
    emit({
        "dataset": dataset, "steps": steps, "batch_size": args.batch_size,
        "epochs": args.epochs,
        "bare_images_per_s": round(steady_images / bare_s, 1),
        "ray_images_per_s": round(steady_images / ray_s, 1),
        "ratio": round(float(bare_s / ray_s), 4),
        "ray_wall_s": round(ray_wall_s, 2),
        "ray_startup_s": round(ray_wall_s - ray_history[-1]["elapsed_seconds"], 2),
        "ratio_wall": round(float(bare_total_s / ray_wall_s), 4),
        "bare_epoch_s_median": round(float(np.median(
            [r["epoch_seconds"] for r in bare_before + bare_after])), 3),
        "ray_epoch_s_median": round(float(np.median(
            [r["epoch_seconds"] for r in ray_history])), 3),
    }, args.json)


if __name__ == "__main__":
    main()
