"""Ray Train around the training loop: DDP workers, per-epoch checkpoints, resume.

The driver creates the MLflow run (one store migration, in one process) and hands its id
to the workers; rank 0 logs per-epoch metrics and sample grids, writes checkpoints, and
every rank reports (``ray.train.report`` is a barrier).
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader

from dgm.config import TrainConfig
from dgm.data.loading import load_split_tensors, to_uint8_images
from dgm.data.parquet import read_meta
from dgm.errors import DgmError
from dgm.images import grid_scale, make_grid
from dgm.models.base import ModelConfigBase
from dgm.models.generator import save_generator
from dgm.models.registry import build_model, config_from_dict
from dgm.paths import atomic_path
from dgm.training.checkpoints import load_checkpoint, save_checkpoint
from dgm.training.loop import train_epochs

GRID_SAMPLES = 64


def ensure_ray() -> None:
    """Connect to ``$RAY_ADDRESS`` if set, else start a local Ray (unless one is running)."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", logging_level="WARNING")


def decide_use_gpu(setting: bool | str, num_workers: int) -> bool:
    """``auto`` uses GPUs only when the cluster has one per worker.

    (Train V2 with ``use_gpu=True`` and no GPU retries the worker start forever.)
    """
    gpus = ray.cluster_resources().get("GPU", 0)
    if setting == "auto":
        return gpus >= num_workers
    if setting and gpus < num_workers:
        raise DgmError(f"train.use_gpu is true but the cluster has {gpus:g} GPU(s) "
                       f"for {num_workers} worker(s)")
    return bool(setting)


def check_cpus(cfg: TrainConfig, use_gpu: bool) -> None:
    """Fail at once, not after waiting forever, when the workers cannot fit the cluster."""
    cpus = ray.cluster_resources().get("CPU", 0)
    wanted = cfg.num_workers * cfg.cpus_per_worker
    if wanted > cpus:
        raise DgmError(f"train.num_workers × train.cpus_per_worker = {wanted:g} CPUs, "
                       f"but the Ray cluster has {cpus:g}")


def controller_environment(cfg: TrainConfig) -> dict[str, str]:
    """Settings Ray Train V2 reads from the driver's environment when ``fit`` starts.

    The report interval (see ``TrainConfig.report_interval_s``), and no patched ``print``
    in workers (it logs every progress line twice).
    """
    return {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(cfg.report_interval_s),
            "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def quiet_reports() -> None:
    """No INFO line per ``ray.train.report`` (Train V2 logs each under its module's path)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: the lines stay, nothing breaks
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_worker(job: dict[str, Any]) -> None:
    """Per-worker entry: build, wrap (DDP), resume if there is a checkpoint, train."""
    quiet_reports()
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

    dataset = load_split_tensors(job["dataset_dir"], "train")
    per_worker = max(1, cfg.batch_size // world)
    loader = DataLoader(dataset, batch_size=per_worker, shuffle=True, drop_last=True)
    loader = ray.train.torch.prepare_data_loader(loader)
    val_loader = None
    if (Path(job["dataset_dir"]) / "val").is_dir():
        val = load_split_tensors(job["dataset_dir"], "val")
        val_loader = ray.train.torch.prepare_data_loader(
            DataLoader(val, batch_size=max(per_worker, 256), shuffle=False))

    logger = None
    if rank == 0 and job.get("run_id"):
        from dgm.tracking.mlflow_runs import RunLogger

        logger = RunLogger(job["run_id"], job["tracking_uri"])
    scorer = None
    if rank == 0 and job.get("validation"):  # the evaluator's val metric (tuning trials)
        from dgm.evaluation.validation import ValidationScorer

        scorer = ValidationScorer.open(**job["validation"])

    def on_epoch_end(epoch: int, metrics: dict[str, float], final: bool) -> None:
        if scorer is not None:
            metrics = {**metrics, **scorer(model)}
        history.append({"epoch": epoch, **metrics})
        if logger is not None:
            logger.log_metrics(metrics, step=epoch)
            if epoch % cfg.sample_every == 0 or final:
                images = to_uint8_images(
                    model.sample(GRID_SAMPLES, torch.Generator().manual_seed(0)))
                grid = make_grid(images, scale=grid_scale(images.shape[1]))
                logger.log_png(grid, f"samples/epoch_{epoch:04d}.png")
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(tmp, model, epoch, history)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch, **metrics}, checkpoint=ckpt)

    log = print if rank == 0 else None
    try:
        train_epochs(model, loader, epochs=cfg.epochs, start_epoch=start_epoch,
                     max_steps=cfg.max_steps, start_step=start_step,
                     on_epoch_end=on_epoch_end, log=log, val_loader=val_loader,
                     early_stopping=cfg.early_stopping, precision=cfg.precision,
                     previous=list(history))
    except Exception as exc:
        if logger is not None:
            logger.set_tags({"dgm.failure_reason": str(exc)})
        raise


@dataclass
class TrainResult:
    """What a finished training leaves behind."""

    run_id: str | None
    model_uri: str | None
    run_name: str
    history: list[dict[str, float]]
    generator_path: Path


def latest_run_name(storage_path: Path, prefix: str) -> str | None:
    """The newest Ray Train run under ``storage_path`` whose name starts with ``prefix``."""
    if not storage_path.is_dir():
        return None
    runs = sorted((p for p in storage_path.iterdir() if p.is_dir() and p.name.startswith(prefix)),
                  key=lambda p: p.stat().st_mtime)
    return runs[-1].name if runs else None


def storage_location(path: str | Path) -> str:
    """A URI (``s3://…``, ``gs://…``) as given; a local path made absolute (Ray needs it)."""
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())


def build_job(dataset_dir: Path, model_config: ModelConfigBase, train_config: TrainConfig,
              run_id: str | None = None, tracking_uri: str | None = None,
              validation: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every worker receives (plain data, absolute paths)."""
    meta = read_meta(Path(dataset_dir) / "train")
    return {
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "model": model_config.model_dump(),
        "train": train_config.model_dump(),
        "image_shape": list(meta.shape_chw),
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "validation": validation,
    }


def make_trainer(job: dict[str, Any], train_config: TrainConfig, storage_path: str | Path,
                 run_name: str, use_gpu: bool, callbacks: list | None = None):
    """The ``TorchTrainer`` of one training run (re-run with the same storage and name to
    resume from its latest checkpoint)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_worker,
        train_loop_config=job,
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
        ),
    )


def fit(
    *,
    dataset_dir: Path,
    model_config: ModelConfigBase,
    train_config: TrainConfig,
    storage_path: Path,
    run_name: str,
    run_id: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Run the ``TorchTrainer``; return (history, final checkpoint state)."""
    ensure_ray()
    use_gpu = decide_use_gpu(train_config.use_gpu, train_config.num_workers)
    check_cpus(train_config, use_gpu)
    job = build_job(dataset_dir, model_config, train_config, run_id, tracking_uri)
    trainer = make_trainer(job, train_config, storage_path, run_name, use_gpu)
    os.environ.update(controller_environment(train_config))
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise DgmError(f"training failed: {root_cause(exc)}") from None
    if result.checkpoint is None:
        raise DgmError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
    return list(state["history"]), state


def root_cause(exc: BaseException) -> str:
    """The last line of the innermost error message: what a user needs to see."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Diverged" in line:
            return line.strip()[:500]
    return (lines[-1] if lines else type(exc).__name__)[:500]


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


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())
