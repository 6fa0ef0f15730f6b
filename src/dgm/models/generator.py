"""A trained generator on disk (``generator.pt``) and seeded sampling from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgm.data.loading import to_uint8_images
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel
from dgm.models.registry import build_model, config_from_dict
from dgm.paths import atomic_path

FORMAT = "dgm-generator/1"


def save_generator(model: GenerativeModel, path: str | Path, extra: dict[str, Any] | None = None):
    """Save weights and the typed config (plain data, loadable with ``weights_only=True``)."""
    payload = {
        "format": FORMAT,
        "config": model.config.model_dump(),
        "image_shape": list(model.image_shape),
        "weights": model.weights(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a model from ``generator.pt`` in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DgmError(f"generator file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise DgmError(f"{path} is not a dgm generator (not a readable torch file)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DgmError(f"{path} is not a dgm generator")
    try:
        model = build_model(config_from_dict(payload["config"]), tuple(payload["image_shape"]))
        model.load_weights(payload["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # missing or odd tensors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DgmError(f"{path}: a damaged dgm generator ({reason[:200]})") from None
    model.extra = dict(payload.get("extra") or {})
    return model.to(device).eval()


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a run seeded ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_uint8(model: GenerativeModel, num_samples: int, seed: int,
                 labels: np.ndarray | torch.Tensor | None = None,
                 latents: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """``num_samples`` uint8 (N, H, W, C) images, a deterministic function of ``seed`` (and
    of ``labels``, the classes a conditional model draws, and of given ``latents``)."""
    generator = torch.Generator().manual_seed(seed)
    if labels is not None:
        labels = torch.as_tensor(np.array(labels))
    given = {} if latents is None else {
        "latents": torch.as_tensor(np.asarray(latents, dtype=np.float32))}
    return to_uint8_images(model.sample(num_samples, generator=generator, labels=labels,
                                        **given))


def balanced_labels(model: GenerativeModel, num_samples: int) -> np.ndarray | None:
    """Classes 0, 1, …, C−1, 0, 1, … for a conditional model (None when unconditional)."""
    return None if not model.conditional else np.arange(num_samples) % model.num_classes
