"""Per-epoch hooks of the training loop.

A callback is built on the driver, travels to every Ray Train worker with the job (it must
pickle), and is set up there: :meth:`EpochCallback.setup` says whether it acts on that rank
and loads what it needs (an MLflow client, the evaluator). Each package owns its callbacks:
checkpoint + report (``training.ray_train``), MLflow metrics and sample grids
(``tracking.callbacks``), the evaluator's validation score (``evaluation.validation``).
Callbacks run in order; one may add entries to ``metrics`` for those after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dgm.models.base import GenerativeModel


class EpochCallback:
    """Base class: no-op hooks."""

    def setup(self, rank: int, world_size: int) -> bool:
        """Prepare on the worker of ``rank``; False: this callback does nothing there."""
        return True

    def on_epoch_end(self, model: GenerativeModel, epoch: int, metrics: dict[str, float],
                     final: bool) -> None:
        """After every epoch (``final``: the last one of the run); may add to ``metrics``."""

    def on_failure(self, error: BaseException) -> None:
        """Training stopped with ``error`` (e.g. a non-finite loss)."""


def active(callbacks: Sequence[EpochCallback], rank: int, world_size: int
           ) -> list[EpochCallback]:
    """The callbacks that act on ``rank``, set up."""
    return [cb for cb in callbacks if cb.setup(rank, world_size)]
