"""The MLflow side of a training run: per-epoch metrics and sample grids, logged by rank 0
of the Ray Train workers to the run the driver created."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dgm.training.callbacks import EpochCallback

GRID_SAMPLES = 64


@dataclass
class MLflowEpochLogger(EpochCallback):
    """Logs each epoch's metrics (step = epoch) and, every ``sample_every`` epochs and at the
    end, a grid of :data:`GRID_SAMPLES` samples (``samples/epoch_NNNN.png``) to ``run_id``;
    a failure's reason becomes the run's ``dgm.failure_reason`` tag."""

    run_id: str
    tracking_uri: str
    sample_every: int

    def setup(self, rank: int, world_size: int) -> bool:
        if rank != 0:
            return False
        from dgm.tracking.mlflow_runs import RunLogger

        self.logger = RunLogger(self.run_id, self.tracking_uri)
        return True

    def on_epoch_end(self, model, epoch: int, metrics: dict[str, float], final: bool) -> None:
        from dgm.data.loading import to_uint8_images
        from dgm.images import grid_scale, make_grid

        self.logger.log_metrics(metrics, step=epoch)
        if epoch % self.sample_every == 0 or final:
            images = to_uint8_images(model.sample(GRID_SAMPLES, torch.Generator().manual_seed(0)))
            grid = make_grid(images, scale=grid_scale(images.shape[1]))
            self.logger.log_png(grid, f"samples/epoch_{epoch:04d}.png")

    def on_failure(self, error: BaseException) -> None:
        self.logger.set_tags({"dgm.failure_reason": str(error)})
