"""The training loop shared by every model family. It knows nothing of Ray or MLflow."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from dgm.errors import TrainingDiverged
from dgm.models.base import GenerativeModel

# on_epoch_end(epoch, metrics, final): ``final`` is true for the last epoch of the run.
# Bookkeeping columns of a history row, as opposed to the model's own metrics.
BOOKKEEPING_KEYS = ("epoch", "step", "epoch_seconds", "elapsed_seconds")
EpochCallback = Callable[[int, dict[str, float], bool], None]


def check_finite(metrics: dict[str, float], epoch: int, step: int) -> None:
    """Raise :class:`TrainingDiverged` naming the first non-finite metric."""
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise TrainingDiverged(f"{key} became {value} at epoch {epoch}, step {step}")


def train_epochs(
    model: GenerativeModel,
    loader: Iterable,
    *,
    epochs: int,
    start_epoch: int = 0,
    max_steps: int | None = None,
    start_step: int = 0,
    on_epoch_end: EpochCallback | None = None,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, float]]:
    """Train epochs ``start_epoch+1 .. epochs``; return each epoch's mean metrics.

    Training stops after ``epochs`` epochs or ``max_steps`` optimisation steps in all,
    whichever comes first (a step-capped last epoch is partial). Each row of the history
    holds ``epoch``, ``step`` (steps so far) and the epoch's mean metrics.
    ``on_epoch_end(epoch, metrics, final)`` runs after every epoch (checkpointing,
    reporting). A non-finite loss stops training with :class:`TrainingDiverged` before the
    epoch ends, so the last checkpoint written is the last good one.
    """
    model.train()
    history = []
    step = start_step
    loop_started = time.perf_counter()
    for epoch in range(start_epoch + 1, epochs + 1):
        if max_steps is not None and step >= max_steps:
            break
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        started = time.perf_counter()
        sums: dict[str, float] = {}
        steps = 0
        for batch in loader:
            images, labels = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (
                batch, None)
            step_metrics = model.train_step(images, labels)
            check_finite(step_metrics, epoch, steps)
            for key, value in step_metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        if steps == 0:
            raise ValueError("the data loader produced no batches (batch size > dataset?)")
        metrics = {key: total / steps for key, total in sums.items()}
        metrics["epoch_seconds"] = time.perf_counter() - started
        metrics["step"] = float(step)
        # wall time of this call so far, including earlier epochs' callbacks (checkpoints)
        metrics["elapsed_seconds"] = time.perf_counter() - loop_started
        history.append({"epoch": epoch, **metrics})
        final = epoch == epochs or (max_steps is not None and step >= max_steps)
        if log is not None:
            shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                             if k not in BOOKKEEPING_KEYS)
            log(f"epoch {epoch}/{epochs} step {step} {shown} ({metrics['epoch_seconds']:.1f}s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics, final)
        if final:
            break
    return history

