"""The training loop shared by every model family. It knows nothing of Ray or MLflow."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext

import torch
import torch.distributed as dist

from dgm.errors import TrainingDiverged
from dgm.models.base import GenerativeModel, eval_mode
from dgm.training.callbacks import EpochCallback
from dgm.training.config import EarlyStopping

__all__ = ["BOOKKEEPING_KEYS", "EarlyStopping", "train_epochs", "validate"]

# on_epoch_end(epoch, metrics, final): ``final`` is true for the last epoch of the run.
# Bookkeeping columns of a history row, as opposed to the model's own metrics.
BOOKKEEPING_KEYS = ("epoch", "step", "epoch_seconds", "elapsed_seconds")
EpochEnd = Callable[[int, dict[str, float], bool], None]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``bf16`` (any device) and for ``auto`` on CUDA; None (fp32) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@torch.no_grad()
def validate(model: GenerativeModel, loader: Iterable) -> dict[str, float]:
    """``val_``-prefixed means of the model's validation metrics over ``loader``, averaged
    over every DDP rank when torch.distributed is initialised (so ranks agree)."""
    sums: dict[str, float] = {}
    count = 0
    with eval_mode(model):
        for batch in loader:
            images, labels = _split(batch)
            n = images.shape[0]
            for key, value in model.validation_step(images, labels).items():
                sums[key] = sums.get(key, 0.0) + value * n
            count += n
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        totals = totals.to(backend_device)
        dist.all_reduce(totals)
        totals = totals.cpu()
    if totals[-1] == 0:
        return {}
    return {f"val_{k}": float(totals[i] / totals[-1]) for i, k in enumerate(keys)}


def _split(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (list, tuple)):
        return batch[0], batch[1]
    return batch, None


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
    on_epoch_end: EpochEnd | None = None,
    callbacks: Sequence[EpochCallback] = (),
    log: Callable[[str], None] | None = print,
    val_loader: Iterable | None = None,
    early_stopping: EarlyStopping | None = None,
    precision: str = "fp32",
    previous: list[dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Train epochs ``start_epoch+1 .. epochs``; return each epoch's mean metrics.

    Training stops after ``epochs`` epochs or ``max_steps`` optimisation steps in all,
    whichever comes first (a step-capped last epoch is partial). Each row of the history
    holds ``epoch``, ``step`` (steps so far) and the epoch's mean metrics.
    ``callbacks`` (:class:`EpochCallback`, in order) and then ``on_epoch_end(epoch, metrics,
    final)`` run after every epoch (validation scores, logging, checkpointing, reporting); a
    callback may add to the epoch's metrics, and an error reaches each callback's
    ``on_failure`` before it propagates. A non-finite loss stops training with
    :class:`TrainingDiverged` before the epoch ends, so the last checkpoint written is the
    last good one.

    With ``val_loader`` each row also holds the model's ``val_*`` metrics; ``early_stopping``
    (with a patience) ends training when its metric stalls and restores the best epoch's
    weights before the final ``on_epoch_end``. ``precision`` ``bf16`` (or ``auto`` on CUDA)
    runs each training step under bf16 autocast, for families that support it. ``previous``:
    history rows of earlier epochs (on resume), used to pick up the early-stopping state.
    """
    try:
        return _train_epochs(
            model, loader, epochs=epochs, start_epoch=start_epoch, max_steps=max_steps,
            start_step=start_step, on_epoch_end=on_epoch_end, callbacks=list(callbacks),
            log=log, val_loader=val_loader, early_stopping=early_stopping,
            precision=precision, previous=previous)
    except Exception as exc:
        for callback in callbacks:
            callback.on_failure(exc)
        raise


def _train_epochs(model, loader, *, epochs, start_epoch, max_steps, start_step, on_epoch_end,
                  callbacks, log, val_loader, early_stopping, precision, previous):
    """The body of :func:`train_epochs` (which reports its failures to the callbacks)."""
    model.train()
    history = []
    step = start_step
    loop_started = time.perf_counter()
    dtype = autocast_dtype(precision, model.device) if model.supports_autocast else None
    autocast = (torch.autocast(device_type=model.device.type, dtype=dtype) if dtype
                else nullcontext())
    stopping = early_stopping if early_stopping and early_stopping.patience else None
    if stopping is not None and val_loader is None and stopping.metric.startswith("val_"):
        raise ValueError(f"early stopping on {stopping.metric} needs validation data")
    best, best_epoch, best_weights = None, 0, None
    for row in previous or []:  # resume: the early-stopping state of earlier epochs
        if stopping is not None and stopping.metric in row and stopping.improved(
                row[stopping.metric], best):
            best, best_epoch = row[stopping.metric], int(row["epoch"])
    for epoch in range(start_epoch + 1, epochs + 1):
        if max_steps is not None and step >= max_steps:
            break
        for source in (loader, getattr(loader, "sampler", None)):  # a new shuffle per epoch
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)
        started = time.perf_counter()
        sums: dict[str, float] = {}
        steps = 0
        for batch in loader:
            images, labels = _split(batch)
            with autocast:
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
        metrics.update(model.end_epoch())  # learning-rate schedules
        if val_loader is not None:
            metrics.update(validate(model, val_loader))
            check_finite({k: v for k, v in metrics.items() if k.startswith("val_")}, epoch, steps)
        metrics["epoch_seconds"] = time.perf_counter() - started
        metrics["step"] = float(step)
        # wall time of this call so far, including earlier epochs' callbacks (checkpoints)
        metrics["elapsed_seconds"] = time.perf_counter() - loop_started
        history.append({"epoch": epoch, **metrics})
        final = epoch == epochs or (max_steps is not None and step >= max_steps)
        if log is not None:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                             if k not in BOOKKEEPING_KEYS)
            log(f"epoch {epoch}/{epochs} step {step} {shown} ({metrics['epoch_seconds']:.1f}s)")
        if stopping is not None:
            if stopping.metric not in metrics:
                raise ValueError(f"early stopping metric {stopping.metric!r} is not reported "
                                 f"(reported: {', '.join(sorted(metrics))})")
            if stopping.improved(metrics[stopping.metric], best):
                best, best_epoch, best_weights = metrics[stopping.metric], epoch, model.weights()
            elif epoch - best_epoch >= stopping.patience:
                final = True
                if best_weights is not None:
                    model.load_weights(best_weights)
                if log is not None:
                    log(f"early stopping at epoch {epoch}: {stopping.metric} has not improved "
                        f"for {stopping.patience} epochs; best {best:.4g} at epoch {best_epoch}"
                        + (" (weights restored)" if best_weights is not None else ""))
        for callback in callbacks:
            callback.on_epoch_end(model, epoch, metrics, final)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics, final)
        if final:
            break
    return history

