"""Training throughput through Ray Train (1 worker) against a bare PyTorch loop.

Same model (the pipeline's DCGAN), data, batch size, epochs and steps, in one run.
``ratio`` = Ray images/s ÷ bare images/s, both timed over the training loop (Ray's
includes its per-epoch checkpoint and report); ``ratio_wall`` also counts Ray's start-up.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, mirror, parser
from torch.utils.data import DataLoader

from dgm.config import TrainConfig, load_params
from dgm.data.loading import load_split_tensors
from dgm.data.parquet import write_dataset
from dgm.data.sources import load_raw
from dgm.models.registry import build_model
from dgm.training import ray_train
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
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgm-bench")
    args = p.parse_args()
    dataset = "mnist" if mirror() else "digits"
    data_dir = subset(dataset, args.images, args.cache)
    model_cfg = load_params(REPO / "configs" / "params.yaml").model("gan")
    shape = (1, 28, 28) if dataset == "mnist" else (1, 8, 8)

    # bare loop: the same model, loop and loader, no Ray
    model = build_model(model_cfg, shape, seed=0).setup()
    loader = DataLoader(load_split_tensors(data_dir, "train"), batch_size=args.batch_size,
                        shuffle=True, drop_last=True)
    torch.manual_seed(0)
    started = time.perf_counter()
    bare = train_epochs(model, loader, epochs=args.epochs, log=None)
    bare_s = time.perf_counter() - started
    steps = int(bare[-1]["step"])

    cpus = float(torch.get_num_threads())
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, num_workers=1,
                            cpus_per_worker=cpus, use_gpu="auto", max_failures=0)
    with tempfile.TemporaryDirectory() as storage:
        started = time.perf_counter()
        history, _ = ray_train.fit(dataset_dir=data_dir, model_config=model_cfg,
                                   train_config=train_cfg, storage_path=Path(storage),
                                   run_name="overhead")
        ray_wall_s = time.perf_counter() - started
    ray_s = history[-1]["elapsed_seconds"]
    assert int(history[-1]["step"]) == steps
    images = steps * args.batch_size
    emit({
        "dataset": dataset, "steps": steps, "batch_size": args.batch_size,
        "epochs": args.epochs,
        "bare_images_per_s": round(images / bare_s, 1),
        "ray_images_per_s": round(images / ray_s, 1),
        "ratio": round(float(bare_s / ray_s), 4),
        "ray_wall_s": round(ray_wall_s, 2),
        "ray_startup_s": round(ray_wall_s - ray_s, 2),
        "ratio_wall": round(float(bare_s / ray_wall_s), 4),
        "bare_epoch_s_median": round(float(np.median([r["epoch_seconds"] for r in bare])), 3),
        "ray_epoch_s_median": round(float(np.median([r["epoch_seconds"] for r in history])), 3),
    }, args.json)


if __name__ == "__main__":
    main()
