"""The ``train`` section of the params, and early stopping (also a model of the section)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from dgm.errors import DgmError
from dgm.models.base import ScheduleConfig
from dgm.section import Section, Seed


class EarlyStopping(Section):
    """Stop when ``metric`` (a history key, e.g. ``val_loss``) has not improved by more than
    ``min_delta`` for ``patience`` epochs; the best epoch's weights are restored."""

    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int | None = Field(None, gt=0, description="null: no early stopping")
    min_delta: float = Field(0.0, ge=0)

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else (
            value > best + self.min_delta)


class TrainConfig(Section):
    epochs: Annotated[int, Field(gt=0, le=1_000_000)] = 30
    # stop at epochs or max_steps, whichever first
    max_steps: Annotated[int, Field(gt=0, le=10**10)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 64
    num_workers: Annotated[int, Field(ge=1, le=4096)] = 1
    cpus_per_worker: Annotated[float, Field(gt=0, le=1024)] = 1.0
    use_gpu: Literal["auto"] | bool = "auto"
    seed: Seed = 0
    sample_every: Annotated[int, Field(gt=0)] = 5
    max_failures: Annotated[int, Field(ge=0, le=1000)] = 0
    checkpoints_to_keep: Annotated[int, Field(ge=1, le=1000)] = 2
    lr_schedule: ScheduleConfig = ScheduleConfig()  # every optimizer, stepped per epoch
    early_stopping: EarlyStopping = EarlyStopping()  # on a validation metric (patience null: off)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA only
    # How workers get the data: memory (each worker holds the splits, shipped through the
    # object store), stream (each rank reads its Ray Data shard from cluster.storage), auto:
    # stream datasets of 256 MiB and more when cluster.storage is set, else memory.
    ingest: Literal["auto", "memory", "stream"] = "auto"
    # Ray Train V2 collects worker reports at this interval and each report waits for the
    # previous one to be collected: Ray's default (2 s) caps training at one epoch per 2 s.
    report_interval_s: Annotated[float, Field(gt=0, le=3600)] = 0.1

    def check_memory(self, rows: int, pixels: int, ingest: str, node_bytes: float) -> None:
        """One line, before any worker starts, when a worker's images alone would not fit
        the memory Ray gives tasks on a node (``node_bytes``, the largest node's): with
        ``ingest: memory`` each worker holds every row of the train and val splits
        (``rows``) as float32, with either ingest its batch share and the batch's gradient
        (``pixels``: C×H×W of one image). The networks come on top: a lower bound."""
        share = -(-self.batch_size // self.num_workers)
        batch = 4 * pixels * 2 * share
        need = 4 * pixels * (rows if ingest == "memory" else 0) + batch
        if node_bytes > 0 and need > node_bytes:  # 0: the cluster did not say
            held = ("the train and val splits as float32 plus its batch" if ingest == "memory"
                    else "its batch")
            hint = ("a smaller train.batch_size" if batch > node_bytes or ingest != "memory"
                    else "train.ingest: stream (with cluster.storage), a smaller dataset or "
                    "resolution")
            raise DgmError(f"each Ray Train worker would hold {need / 2**30:.1f} GiB for "
                           f"{held}, more than the {node_bytes / 2**30:.1f} GiB Ray gives tasks "
                           f"on a node: use {hint}")

    def check_batch(self, train_rows: int, workers_from: str = "train") -> None:
        """One line, before any worker starts, when ``train.batch_size`` cannot be formed:
        more images than the train split holds (a huge batch would only exhaust the workers'
        memory), or fewer than one per worker (``workers_from``: the section that set
        ``num_workers``, train or tune)."""
        if self.batch_size > train_rows:
            raise DgmError(f"train.batch_size {self.batch_size} exceeds the {train_rows} "
                           "images of the train split")
        if self.batch_size < self.num_workers:
            raise DgmError(f"train.batch_size {self.batch_size} is smaller than "
                           f"{workers_from}.num_workers {self.num_workers} (one image per "
                           "worker)")
