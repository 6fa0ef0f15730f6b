"""The interface every model family implements, and helpers shared by the families."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dgm.errors import DgmError, TrainingDiverged

ImageShape = tuple[int, int, int]  # (channels, height, width)
# Wraps one network for distributed training (e.g. Ray's ``prepare_model``): (module, ddp_kwargs).
WrapFn = Callable[[nn.Module, dict[str, Any]], nn.Module]


class ModelConfigBase(BaseModel):
    """Base of every family's typed config; unknown keys are errors.

    Every family shares the gradient guards of :meth:`GenerativeModel.optimize`:
    ``grad_clip`` (clip each update's total gradient norm; null: no clipping) and
    ``max_grad_norm`` (a larger or non-finite norm stops training as diverged).
    """

    model_config = ConfigDict(extra="forbid")

    grad_clip: float | None = Field(None, gt=0)
    max_grad_norm: float = Field(1e6, gt=0)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP (or similar) wrapper."""
    return getattr(module, "module", module)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block, restoring their previous mode after."""
    previous = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in zip(modules, previous, strict=True):
            m.train(was_training)


def require_divisible_by_4(image_shape: ImageShape) -> tuple[int, int]:
    """The spatial size after two stride-2 stages; error if the image does not allow it."""
    _, height, width = image_shape
    if height % 4 or width % 4:
        raise DgmError(f"image size {height}x{width} must be divisible by 4 for these models")
    return height // 4, width // 4


class GenerativeModel(nn.Module):
    """A generative model that owns its training step and its sampler.

    Subclasses set ``family``, ``config_class`` and ``networks`` (the attribute names of the
    networks that are trained and saved), build those networks in ``__init__`` and
    implement :meth:`make_optimizers`, :meth:`train_step` and :meth:`sample`.
    """

    family: ClassVar[str]
    config_class: ClassVar[type[ModelConfigBase]]
    networks: ClassVar[tuple[str, ...]]
    ddp_kwargs: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: ModelConfigBase, image_shape: ImageShape):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # --- set-up -------------------------------------------------------------------------
    def setup(self, wrap: WrapFn | None = None) -> GenerativeModel:
        """Wrap each network for distributed training (if ``wrap``) and create optimizers."""
        if wrap is not None:
            for name in self.networks:
                setattr(self, name, wrap(getattr(self, name), self.ddp_kwargs.get(name, {})))
        self.optimizers = self.make_optimizers()
        return self

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- training and sampling ----------------------------------------------------------
    def optimize(self, name: str, loss: torch.Tensor) -> float:
        """Backward ``loss`` and step optimizer ``name``, clipping the gradient norm to
        ``grad_clip``; a norm above ``max_grad_norm`` (or not finite) raises
        :class:`TrainingDiverged` before the step. Returns the norm before clipping."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        limit = self.config.grad_clip or float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
        if not math.isfinite(norm) or norm > self.config.max_grad_norm:
            raise TrainingDiverged(f"gradient norm of {name} became {norm:.3g} "
                                   f"(max_grad_norm {self.config.max_grad_norm:g})")
        opt.step()
        return norm

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        """One optimisation step on a batch of images in [0, 1] (N, C, H, W)."""
        raise NotImplementedError

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num_samples`` images in [0, 1], shape (N, C, H, W), on the CPU."""
        raise NotImplementedError

    def latents(self, num_samples: int, dim: int, generator: torch.Generator | None):
        """Standard-normal latents drawn on the CPU (device-independent), moved to the model."""
        z = torch.randn(num_samples, dim, generator=generator)
        return z.to(self.device)

    # --- state --------------------------------------------------------------------------
    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """Network weights, free of any distributed wrapper, on the CPU."""
        return {
            name: {k: v.detach().cpu() for k, v in unwrap(getattr(self, name)).state_dict().items()}
            for name in self.networks
        }

    def load_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        for name in self.networks:
            unwrap(getattr(self, name)).load_state_dict(weights[name])

    def training_state(self) -> dict[str, Any]:
        """Weights plus optimizer state: everything needed to resume."""
        return {
            "weights": self.weights(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_weights(state["weights"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
