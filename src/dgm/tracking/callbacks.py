"""The MLflow side of a training run: per-epoch metrics and sample grids, sent by rank 0
of the Ray Train workers to the run the driver created, through a :class:`Tracking` that
rank 0 can reach (``tracking.relay.worker_tracking``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dgm.errors import TrackingUnreachable
from dgm.training.callbacks import EpochCallback

GRID_SAMPLES = 64
GRID_KEY = "samples"  # MLflow image key of the grids (one step per logged epoch)


@dataclass
class MLflowEpochLogger(EpochCallback):
    """Logs each epoch's metrics (step = epoch) and, every ``sample_every`` epochs and at the
    end, a grid of :data:`GRID_SAMPLES` samples (``samples/epoch_NNNN.png``, and image
    :data:`GRID_KEY` at step = epoch) to ``run_id``;
    epochs up to ``logged_through`` are skipped (retrained after a resume, logged before);
    a failure's reason becomes the run's ``dgm.failure_reason`` tag. ``tracking``: a
    ``Tracking`` or a proxy to one."""

    run_id: str
    tracking: Any
    sample_every: int
    logged_through: int = 0  # a resumed run: epochs up to this one are in MLflow already


    def setup(self, rank: int, world_size: int) -> bool:
        return rank == 0

    def on_epoch_end(self, model, epoch: int, metrics: dict[str, float], final: bool) -> None:
        from dgm.data.loading import to_uint8_images
        from dgm.images import grid_scale, make_grid

        if epoch <= self.logged_through:  # retrained after a resume: logged once only
            return
        self.tracking.log_metrics(self.run_id, metrics, epoch)
        if epoch % self.sample_every == 0 or final:
            images = to_uint8_images(model.sample(GRID_SAMPLES, torch.Generator().manual_seed(0)))
            grid = make_grid(images, scale=grid_scale(images.shape[1]))
            self.tracking.log_png(self.run_id, grid, f"samples/epoch_{epoch:04d}.png",
                                  key=GRID_KEY, step=epoch)

    def on_failure(self, error: BaseException) -> None:
        if isinstance(error, TrackingUnreachable):  # nowhere to write the reason to
            return
        self.tracking.set_tags(self.run_id, {"dgm.failure_reason": str(error)})
