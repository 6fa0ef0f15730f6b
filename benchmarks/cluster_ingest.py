"""Images/s per Ray Train worker and its peak RSS: the splits streamed by Ray Data from S3
(``train.ingest: stream``) against the in-memory path (``memory``: the shipped splits as a
``TensorDataset``), both on the isolated-node harness of the tests (``tests/harness.py``:
worker nodes that cannot see the driver's files, moto as S3), for MNIST at 1× and 4× (the
train split repeated).

    python benchmarks/cluster_ingest.py --json out.json [--epochs 3] [--scales 1 4]

The workers only iterate the batches (no model), so the figure is the ingest's ceiling.
Needs the MNIST IDX mirror (``DGM_DATA_DIR``) and ``unshare -m``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, emit, mirror, parser, prepared

sys.path.insert(0, str(REPO / "tests"))


def repeated(dataset_dir: Path, times: int, out: Path) -> Path:
    """``dataset_dir`` with its train shards repeated ``times`` times (val/test as they are)."""
    if out.is_dir():
        return out
    shutil.copytree(dataset_dir, out)
    shards = sorted((out / "train").glob("*.parquet"))
    for copy in range(1, times):
        for shard in shards:
            shutil.copy(shard, out / "train" / f"copy{copy}-{shard.name}")
    return out


def iterate(job: dict) -> None:
    """A Ray Train worker: E epochs over its loader; rank 0 reports images/s (per worker,
    after the first epoch) and the peak RSS of the workers."""
    import resource

    import ray.train
    import torch
    import torch.distributed as dist

    from dgm.training.ray_train import data_loaders

    loader, _ = data_loaders(job["dataset"], job["batch_size"], seed=0)
    rates = []
    for epoch in range(1, job["epochs"] + 1):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        started, images = time.perf_counter(), 0
        for batch in loader:
            images += batch[0].shape[0]
        rates.append(images / (time.perf_counter() - started))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    figures = torch.tensor([sum(rates[1:]) / max(1, len(rates) - 1), rss], dtype=torch.float64)
    peak = figures.clone()
    dist.all_reduce(figures)  # sums over the ranks
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    world = ray.train.get_context().get_world_size()
    metrics = {"images_per_s": float(figures[0] / world), "peak_rss_mib": float(peak[1]),
               "first_epoch_images_per_s": rates[0]}
    with tempfile.TemporaryDirectory() as tmp:  # Train V2 keeps metrics with a checkpoint
        (Path(tmp) / "figures.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def measure(dataset_dir: Path, ingest: str, storage: str, epochs: int) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dgm.training.ray_train import training_data

    data, _ = training_data(dataset_dir, ingest, storage)
    trainer = TorchTrainer(
        iterate, train_loop_config={"dataset": data, "batch_size": 64, "epochs": epochs},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets=data.datasets() if ingest == "stream" else None,
        run_config=RunConfig(storage_path=f"{storage}/bench", name=f"{ingest}-{time.time_ns()}"))
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / "figures.json").read_text())


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    args = p.parse_args()
    if mirror() is None:
        sys.exit("cluster_ingest: needs the MNIST IDX mirror (DGM_DATA_DIR)")
    from harness import BUCKET, IsolatedCluster, unshare_available

    reason = unshare_available()
    if reason:
        sys.exit(f"cluster_ingest: isolated nodes need unshare -m: {reason}")
    work = Path(tempfile.mkdtemp(prefix="dgm-ingest-"))
    mnist = prepared("mnist", work / "cache")
    cluster = IsolatedCluster(hidden=[REPO / "src", work, Path(tempfile.gettempdir()) / "ray"],
                              logs=work / "logs")
    figures: dict = {"epochs": args.epochs, "batch_size_per_worker": 64, "workers": 2}
    try:
        cluster.start()
        os.environ.update(cluster.env)
        from dgm.cluster import ensure_ray

        ensure_ray()
        storage = f"s3://{BUCKET}/bench"
        for scale in args.scales:
            data = repeated(mnist, scale, work / f"mnist-x{scale}")
            for ingest in ("memory", "stream"):
                result = measure(data, ingest, storage, args.epochs)
                for key, value in result.items():
                    figures[f"{ingest}_x{scale}_{key}"] = round(float(value), 1)
            figures[f"x{scale}_stream_vs_memory"] = round(
                figures[f"stream_x{scale}_images_per_s"]
                / figures[f"memory_x{scale}_images_per_s"], 3)
    finally:
        import ray

        ray.shutdown()  # before the cluster goes: a driver that loses its GCS exits at once
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
