"""Training checkpoints: plain data, loaded with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dgm.models.base import GenerativeModel

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(
    directory: str | Path, model: GenerativeModel, epoch: int, history: list[dict[str, float]]
) -> Path:
    """Write model, optimizer state, epoch and history to ``directory/checkpoint.pt``."""
    path = Path(directory) / CHECKPOINT_FILE
    torch.save(
        {
            "epoch": epoch,
            "history": history,
            "config": model.config.model_dump(),
            "image_shape": list(model.image_shape),
            **model.training_state(),
        },
        path,
    )
    return path


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
