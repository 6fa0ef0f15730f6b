"""Ray Train around the training loop: DDP workers, per-epoch checkpoints, resume.

The driver creates the MLflow run (one store migration, in one process) and hands the
workers a job: plain data plus the run's epoch callbacks (MLflow logging, a tuning
trial's validation score). Every rank runs the loop; after each epoch the callbacks run and
then :class:`CheckpointReport`: rank 0 writes a checkpoint and every rank reports
(``ray.train.report`` is a barrier).
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader

from dgm.cluster import (
    ShippedDirectory,
    apply_train_environment,
    check_code_version,
    check_resources,
    check_storage,
    code_version,
    decide_use_gpu,
    directory_digest,
    ensure_ray,
    quiet_reports,
    root_cause,
    ship_directory,
)
from dgm.data.loading import load_split_tensors, to_dataset
from dgm.data.parquet import count_rows, read_images, read_meta
from dgm.data.streaming import (
    STREAM_MIN_BYTES,
    ShardLoader,
    StreamedDataset,
    split_bytes,
    stream_dataset,
)
from dgm.errors import DgmError
from dgm.models.base import ModelConfigBase
from dgm.models.generator import save_generator
from dgm.models.registry import build_model, config_from_dict
from dgm.paths import atomic_path
from dgm.signals import run_interruptibly
from dgm.storage import storage_location
from dgm.timing import add, phase
from dgm.training.callbacks import EpochCallback, active
from dgm.training.checkpoints import load_checkpoint, save_checkpoint
from dgm.training.config import TrainConfig
from dgm.training.loop import train_epochs


@dataclass
class CheckpointReport(EpochCallback):
    """Last of the epoch's callbacks: appends the epoch to the history, writes the checkpoint
    (rank 0) and reports the metrics to Ray Train (every rank: a barrier)."""

    history: list[dict[str, float]] = field(default_factory=list)
    rank: int = 0

    def on_epoch_end(self, model, epoch: int, metrics: dict[str, float], final: bool) -> None:
        self.history.append({"epoch": epoch, **metrics})
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                save_checkpoint(tmp, model, epoch, self.history)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch, **metrics}, checkpoint=checkpoint)


def train_worker(job: dict[str, Any]) -> None:
    """Per-worker entry: build, wrap (DDP), resume if there is a checkpoint, train."""
    quiet_reports()
    check_code_version(job["code_version"], "a Ray Train worker")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TrainConfig.model_validate(job["train"])
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(config_from_dict(job["model"]), tuple(job["image_shape"]))
    model.setup(wrap=lambda net, kwargs: ray.train.torch.prepare_model(
        net, parallel_strategy_kwargs=kwargs or None), schedule=cfg.lr_schedule, epochs=cfg.epochs)
    torch.manual_seed(cfg.seed * 1000 + rank)  # distinct noise per rank

    start_epoch, start_step, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
        model.load_training_state(state)
        start_epoch, history = state["epoch"], list(state["history"])
        start_step = int(history[-1]["step"]) if history else 0

    per_worker = max(1, cfg.batch_size // world)
    loader, val_loader = data_loaders(job["dataset"], per_worker, cfg.seed)
    callbacks = active(job.get("callbacks") or [], rank, world)
    callbacks.append(CheckpointReport(history, rank))
    train_epochs(model, loader, epochs=cfg.epochs, start_epoch=start_epoch,
                 max_steps=cfg.max_steps, start_step=start_step, callbacks=callbacks,
                 log=print if rank == 0 else None, val_loader=val_loader,
                 early_stopping=cfg.early_stopping, precision=cfg.precision,
                 previous=list(history))


def data_loaders(dataset: ShippedDirectory | StreamedDataset, per_worker: int, seed: int):
    """This rank's (train loader, val loader or None): its shard of the Ray Data splits, or
    the shipped splits in memory behind a ``DistributedSampler``."""
    val_batch = max(per_worker, 256)
    if isinstance(dataset, StreamedDataset):
        loader = ShardLoader("train", dataset.meta, per_worker, shuffle=True, seed=seed,
                             train_rows=dataset.train_rows)
        val_loader = None
        if "val" in dataset.splits:
            val_loader = ShardLoader("val", dataset.meta, val_batch, shuffle=False, seed=seed)
        elif dataset.small_val is not None:
            val_loader = ray.train.torch.prepare_data_loader(DataLoader(
                to_dataset(read_images(dataset.small_val.materialize())),
                batch_size=val_batch, shuffle=False))
        return loader, val_loader
    dataset_dir = dataset.materialize()
    loader = ray.train.torch.prepare_data_loader(DataLoader(
        load_split_tensors(dataset_dir, "train"), batch_size=per_worker, shuffle=True,
        drop_last=True))
    val_loader = None
    if (dataset_dir / "val").is_dir():
        val_loader = ray.train.torch.prepare_data_loader(DataLoader(
            load_split_tensors(dataset_dir, "val"), batch_size=val_batch, shuffle=False))
    return loader, val_loader


def resolve_ingest(setting: str, cluster_storage: str | None, dataset_dir: Path) -> str:
    """``memory`` or ``stream`` for ``train.ingest`` (auto: stream a dataset of at least
    :data:`STREAM_MIN_BYTES` when the cluster has a storage every node sees)."""
    if setting == "auto":
        big = split_bytes(dataset_dir) >= STREAM_MIN_BYTES
        return "stream" if cluster_storage is not None and big else "memory"
    return setting


def training_data(dataset_dir: Path, ingest: str, cluster_storage: str | None
                  ) -> tuple[ShippedDirectory | StreamedDataset, list[int]]:
    """The prepared dataset as the workers will read it (``ingest``: memory or stream) and
    its image shape (C, H, W)."""
    if ingest == "stream":
        data = stream_dataset(dataset_dir, cluster_storage, directory_digest(dataset_dir))
        if "val" not in data.splits and (Path(dataset_dir) / "val").is_dir():
            data = replace(data, small_val=ship_directory(Path(dataset_dir) / "val"))
        return data, list(data.meta.shape_chw)
    return ship_dataset(dataset_dir)


def ship_dataset(dataset_dir: Path) -> tuple[ShippedDirectory, list[int]]:
    """The prepared dataset shipped to the workers through the object store (no worker reads
    the driver's disk), and its image shape (C, H, W)."""
    meta = read_meta(Path(dataset_dir) / "train")
    return ship_directory(dataset_dir), list(meta.shape_chw)


def build_job(dataset: ShippedDirectory | StreamedDataset, image_shape: list[int],
              model_config: ModelConfigBase, train_config: TrainConfig,
              callbacks: list[EpochCallback] | None = None) -> dict[str, Any]:
    """What every worker receives: plain data, the dataset (shipped, or streamed by Ray
    Data), the callbacks and the driver's code version (a worker running other code refuses)."""
    return {
        "dataset": dataset,
        "model": model_config.model_dump(),
        "train": train_config.model_dump(),
        "image_shape": list(image_shape),
        "callbacks": list(callbacks or []),
        "code_version": code_version(),
    }


def prepare_cluster(cfg: TrainConfig, section: str, driver_cpus: float = 0.0,
                    storage: str | None = None) -> bool:
    """Join or start Ray, check that ``cfg``'s workers fit it and that every node sees
    ``storage`` (``cluster.storage``; None: local, refused on a multi-node cluster); return
    whether the workers use GPUs (``section`` names the params in messages: ``train`` or
    ``tune``)."""
    ensure_ray()
    check_storage(storage)
    use_gpu = decide_use_gpu(cfg.use_gpu, cfg.num_workers, f"{section}.use_gpu")
    what = f"{section}.num_workers × {section}.cpus_per_worker"
    if driver_cpus:
        what = f"a trial ({section}.trial_cpus + {what})"
    check_resources(workers=cfg.num_workers, cpus_per_worker=cfg.cpus_per_worker,
                    driver_cpus=driver_cpus, use_gpu=use_gpu, what=what)
    return use_gpu


def train_log_level() -> str:
    """Ray Train's console level (``DGM_LOG_LEVEL``, else CRITICAL): dgm reports a failed run
    in one line, and Ray Train's own error lines (an ASHA-stopped trial's failed report, a
    slow placement-group cleaner on a busy machine) are tracebacks a user can do nothing
    about. Ray's session log files keep every level."""
    level = os.environ.get("DGM_LOG_LEVEL", "CRITICAL").upper()
    if not isinstance(logging.getLevelName(level), int):
        raise DgmError(f"DGM_LOG_LEVEL={level}: not a log level (DEBUG, INFO, WARNING, …)")
    return level


def make_trainer(job: dict[str, Any], train_config: TrainConfig, storage_path: str,
                 run_name: str, use_gpu: bool, callbacks: list | None = None,
                 log_level: str | None = None):
    """The ``TorchTrainer`` of one training run (re-run with the same storage and name to
    resume from its latest checkpoint); ``log_level``: of Ray Train's console lines
    (:func:`train_log_level` when None)."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    streamed = job["dataset"] if isinstance(job["dataset"], StreamedDataset) else None
    return TorchTrainer(
        train_worker,
        train_loop_config=job,
        datasets=streamed.datasets(train_config.epochs, train_config.seed) if streamed else None,
        scaling_config=ScalingConfig(
            num_workers=train_config.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": train_config.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_location(storage_path),
            failure_config=FailureConfig(max_failures=train_config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=train_config.checkpoints_to_keep),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level=log_level or train_log_level()),
        ),
    )


def check_worker_memory(cfg: TrainConfig, dataset_dir: Path, ingest: str) -> None:
    """:meth:`TrainConfig.check_memory` against the largest live node of the Ray cluster."""
    meta = read_meta(Path(dataset_dir) / "train")
    rows = sum(count_rows(Path(dataset_dir) / split) for split in ("train", "val")
               if (Path(dataset_dir) / split).is_dir())
    nodes = [node["Resources"].get("memory", 0.0) for node in ray.nodes() if node["Alive"]]
    channels, height, width = meta.shape_chw
    cfg.check_memory(rows, channels * height * width, ingest, max(nodes, default=0.0))


def fit(
    *,
    dataset_dir: Path,
    model_config: ModelConfigBase,
    train_config: TrainConfig,
    storage_path: str,
    run_name: str,
    callbacks: list[EpochCallback] | None = None,
    cluster_storage: str | None = None,
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Run the ``TorchTrainer`` (``callbacks`` after every epoch, on the workers) with its
    checkpoints under ``storage_path`` (``cluster_storage`` when set: a path or URI every
    node sees); return (history, final checkpoint state)."""
    use_gpu = prepare_cluster(train_config, "train", storage=cluster_storage)
    ingest = resolve_ingest(train_config.ingest, cluster_storage, dataset_dir)
    check_worker_memory(train_config, dataset_dir, ingest)
    job = build_job(*training_data(dataset_dir, ingest, cluster_storage), model_config,
                    train_config, callbacks)
    trainer = make_trainer(job, train_config, storage_path, run_name, use_gpu)
    apply_train_environment(train_config.report_interval_s)
    try:
        with phase("ray_train"):  # Ctrl-C / SIGTERM: KeyboardInterrupt here, not sys.exit
            result = run_interruptibly(trainer.fit, "ray-train-fit")
    except ray.train.TrainingFailedError as exc:
        raise DgmError(f"training failed: {root_cause(exc)}") from None
    if result.checkpoint is None:
        raise DgmError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
    if state["history"]:  # the workers' own loop time, this call's epochs included
        add("train_loop", float(state["history"][-1].get("elapsed_seconds", 0.0)))
    return list(state["history"]), state


def write_outputs(
    state: dict[str, Any], history: list[dict[str, float]], out_dir: Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """From the final checkpoint: ``generator.pt`` (with ``extra`` facts about the data) and
    ``history.csv`` (the DVC plot) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(config_from_dict(state["config"]), tuple(state["image_shape"]))
    model.load_weights(state["weights"])
    generator_path = save_generator(model, out_dir / "generator.pt",
                                    extra={"epochs": state["epoch"], **(extra or {})})
    keys = sorted({k for row in history for k in row} - {"epoch"})
    with atomic_path(out_dir / "history.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", *keys])
        writer.writeheader()
        writer.writerows(history)
    return generator_path
