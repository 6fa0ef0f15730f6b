"""Images/s per Ray Train worker and its peak RSS: the splits streamed by Ray Data from S3
(``train.ingest: stream``) against the in-memory path (``memory``: the shipped splits as a
``TensorDataset``), both on the isolated-node harness of the tests (``tests/harness.py``:
worker nodes that cannot see the driver's files, moto as S3), for MNIST at 1× and 4× (the
train split repeated).

Two measurements per ingest and scale:

- ``loader``: the workers only iterate the batches (no model): the ingest's ceiling, the
  mean wait for an epoch's first batch (Ray Data starts its execution every epoch), the
  peak RSS of a worker, and its peak private memory (RSS without the shared pages of the
  object store that the worker maps while it reads blocks).
- ``train``: the pipeline's own ``dgm train`` path (``ray_train.fit``, the DCGAN of
  ``configs/params.yaml``, 2 DDP workers): images/s per worker that reach the model.

Ratios are stream ÷ memory for the same scale, measured in one run. Needs the MNIST IDX
mirror (``DGM_DATA_DIR``) and ``unshare -m``.

    python benchmarks/cluster_ingest.py --json out.json [--epochs 3] [--train-epochs 2]
        [--scales 1 4] [--modes loader train]
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


def private_mib() -> float:
    """This process's resident memory that is its own (anonymous pages), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def iterate(job: dict) -> None:
    """A Ray Train worker: E epochs over its loader; rank 0 reports images/s (per worker,
    after the first epoch), the mean wait for an epoch's first batch, and the workers' peak
    RSS and private memory."""
    import resource

    import ray.train
    import torch
    import torch.distributed as dist

    from dgm.training.ray_train import data_loaders

    loader, _ = data_loaders(job["dataset"], job["batch_size"], seed=0)
    rates, waits, private = [], [], private_mib()
    for epoch in range(1, job["epochs"] + 1):
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        started, images = time.perf_counter(), 0
        for batch in loader:
            if images == 0:
                waits.append(time.perf_counter() - started)
            images += batch[0].shape[0]
            if images % (64 * 32) == 0:
                private = max(private, private_mib())
        rates.append(images / (time.perf_counter() - started))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    steady = slice(1, None) if len(rates) > 1 else slice(None)
    figures = torch.tensor([sum(rates[steady]) / len(rates[steady]),
                            sum(waits[steady]) / len(waits[steady])], dtype=torch.float64)
    peak = torch.tensor([rss, max(private, private_mib())], dtype=torch.float64)
    dist.all_reduce(figures)  # sums over the ranks
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    world = ray.train.get_context().get_world_size()
    metrics = {"images_per_s": float(figures[0] / world),
               "epoch_start_s": float(figures[1] / world),
               "peak_rss_mib": float(peak[0]), "peak_private_mib": float(peak[1]),
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
        datasets=data.datasets(epochs, seed=0) if ingest == "stream" else None,
        run_config=RunConfig(storage_path=f"{storage}/bench", name=f"{ingest}-{time.time_ns()}"))
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        return json.loads((Path(directory) / "figures.json").read_text())


def train(dataset_dir: Path, ingest: str, storage: str, epochs: int) -> dict:
    """``dgm train``'s path for the pipeline's GAN with 2 DDP workers: images/s per worker
    over epochs 2..E (each epoch's wall time, validation and checkpoint included)."""
    from dgm.config import load_params
    from dgm.training import ray_train
    from dgm.training.config import TrainConfig

    cfg = TrainConfig(epochs=epochs, batch_size=128, num_workers=2, cpus_per_worker=0.5,
                      ingest=ingest, max_failures=0)
    history, _ = ray_train.fit(
        dataset_dir=dataset_dir, model_config=load_params(REPO / "configs" / "params.yaml")
        .model("gan"), train_config=cfg, storage_path=f"{storage}/bench",
        run_name=f"train-{ingest}-{time.time_ns()}", cluster_storage=storage)
    steady = history[1:] or history
    steps = history[-1]["step"] - (history[0]["step"] if len(history) > 1 else 0)
    seconds = sum(row["epoch_seconds"] for row in steady)
    return {"train_images_per_s": steps * cfg.batch_size / cfg.num_workers / seconds}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    p.add_argument("--modes", nargs="+", choices=["loader", "train"],
                   default=["loader", "train"])
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
    figures: dict = {"epochs": args.epochs, "train_epochs": args.train_epochs,
                     "batch_size_per_worker": 64, "workers": 2}
    try:
        cluster.start()
        os.environ.update(cluster.env)
        from dgm.cluster import ensure_ray

        ensure_ray()
        storage = f"s3://{BUCKET}/bench"
        for scale in args.scales:
            data = repeated(mnist, scale, work / f"mnist-x{scale}")
            for ingest in ("memory", "stream"):
                result = {}
                if "loader" in args.modes:
                    result.update(measure(data, ingest, storage, args.epochs))
                if "train" in args.modes:
                    result.update(train(data, ingest, storage, args.train_epochs))
                for key, value in result.items():
                    figures[f"{ingest}_x{scale}_{key}"] = round(float(value), 3)
            for key, name in (("images_per_s", "stream_vs_memory"),
                              ("train_images_per_s", "train_stream_vs_memory")):
                if f"stream_x{scale}_{key}" in figures:
                    figures[f"x{scale}_{name}"] = round(
                        figures[f"stream_x{scale}_{key}"] / figures[f"memory_x{scale}_{key}"], 3)
    finally:
        import ray

        ray.shutdown()  # before the cluster goes: a driver that loses its GCS exits at once
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
