"""Model families by name. Adding a family: one module and one line in ``FAMILIES``."""

from __future__ import annotations

from typing import Annotated, Union

import torch
from pydantic import Field

from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, ImageShape, ModelConfigBase
from dgm.models.gan import DCGAN
from dgm.models.rbm import RBM
from dgm.models.vae import VAE

FAMILIES: dict[str, type[GenerativeModel]] = {cls.family: cls for cls in (DCGAN, VAE, RBM)}
MODEL_CONFIGS: dict[str, type[ModelConfigBase]] = {
    name: cls.config_class for name, cls in FAMILIES.items()
}
ModelConfig = Annotated[
    Union[tuple(MODEL_CONFIGS.values())],  # noqa: UP007 - built from the registry
    Field(discriminator="family"),
]


def build_model(config: ModelConfigBase, image_shape: ImageShape, seed: int | None = None):
    """A fresh model of ``config.family`` for images of ``image_shape`` (C, H, W)."""
    family = getattr(config, "family", None)
    if family not in FAMILIES:
        raise DgmError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    if seed is not None:
        torch.manual_seed(seed)
    return FAMILIES[family](config, tuple(image_shape))


def config_from_dict(data: dict) -> ModelConfigBase:
    """Rebuild a typed model config from its ``model_dump()``."""
    family = data.get("family")
    if family not in MODEL_CONFIGS:
        raise DgmError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    return MODEL_CONFIGS[family].model_validate(data)


def validation_metric(family: str) -> str:
    """What a tuning trial of ``family`` reports when the config names no metric."""
    return FAMILIES[family].validation_metric if family in FAMILIES else "fid"


def check_classes(config: ModelConfigBase, num_classes: int, dataset: str,
                  model_name: str) -> None:
    """A conditional model's ``num_classes`` must be the dataset's class count."""
    if getattr(config, "conditional", False) and not num_classes:
        raise DgmError(f"models.{model_name} is conditional but {dataset} is unlabelled "
                       "(set conditional: false, or give the images class sub-folders)")
    if getattr(config, "conditional", False) and config.num_classes != num_classes:
        raise DgmError(f"models.{model_name}.num_classes is {config.num_classes} but "
                       f"{dataset} has {num_classes} classes")
