"""The interface every model family implements, and helpers shared by the families."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dgm.errors import DgmError, TrainingDiverged

# Sane upper bounds of the families' sizes: beyond them a config only exhausts memory.
MAX_LATENT = 4096  # latent dimensions
MAX_WIDTH = 1024  # channels nearest the image (doubled per block, at most 8x)
MAX_UNITS = 65_536  # units of one fully connected layer (VAE mlp, RBM hidden)

ImageShape = tuple[int, int, int]  # (channels, height, width)
# Wraps one network for distributed training (e.g. Ray's ``prepare_model``): (module, ddp_kwargs).
WrapFn = Callable[[nn.Module, dict[str, Any]], nn.Module]


class ModelConfigBase(BaseModel):
    """Base of every family's typed config; unknown keys are errors.

    Every family shares the gradient guards of :meth:`GenerativeModel.optimize`:
    ``grad_clip`` (clip each update's total gradient norm; null: no clipping) and
    ``max_grad_norm`` (a larger or non-finite norm stops training as diverged), and the
    overfitting controls ``dropout`` (rate in the family's networks) and ``weight_decay``.
    Every number has a finite, sane range (inf and nan are refused): a value that
    validates trains.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    grad_clip: float | None = Field(None, gt=0, le=1e6)
    max_grad_norm: float = Field(1e6, gt=0, le=1e9)
    dropout: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, le=1)


class ConditionalConfigBase(ModelConfigBase):
    """Config of a family that can be class-conditional (labels in training and sampling)."""

    conditional: bool = False
    num_classes: int = Field(10, gt=1, le=100_000,
                             description="conditional: classes of the dataset")


class ScheduleConfig(BaseModel):
    """Learning-rate decay applied to every optimizer of a model, stepped once per epoch."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["none", "step", "exponential", "cosine"] = "none"
    step_epochs: int = Field(10, gt=0, le=1_000_000,
                             description="step: decay every this many epochs")
    gamma: float = Field(0.5, gt=0, le=1, description="step/exponential: decay factor")
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine: final lr / initial lr")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, epochs: int):
    """The torch scheduler of ``schedule`` for ``optimizer`` (None for ``none``)."""
    sched = torch.optim.lr_scheduler
    if schedule.kind == "step":
        return sched.StepLR(optimizer, step_size=schedule.step_epochs, gamma=schedule.gamma)
    if schedule.kind == "exponential":
        return sched.ExponentialLR(optimizer, gamma=schedule.gamma)
    if schedule.kind == "cosine":
        base = optimizer.param_groups[0]["lr"]
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs),
                                       eta_min=base * schedule.min_lr_factor)
    return None


def bernoulli(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary samples of ``probs``, drawn on the CPU when a CPU generator is given."""
    if generator is not None and probs.device.type != generator.device.type:
        noise = torch.rand(probs.shape, generator=generator).to(probs.device)
    else:
        noise = torch.rand(probs.shape, generator=generator, device=probs.device)
    return (noise < probs).to(probs.dtype)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot rows of integer ``labels``."""
    return F.one_hot(labels.long(), num_classes).float()


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


MIN_BASE = 4  # halve the image while the half is at least this (and the side even)
MIN_BLOCKS = 2
MAX_WIDTH_FACTOR = 8  # no feature map is wider than 8 × width


@dataclass(frozen=True)
class ScalePlan:
    """How a convolutional network spans an image: ``blocks`` stride-2 stages between the
    image and a ``base`` (h, w) feature map, and the width of every stage.

    ``widths(w)[k]`` is the channel count at level ``k`` (0: the image side's first stage
    … ``blocks - 1``: the base): ``w · 2^k``, capped at ``MAX_WIDTH_FACTOR · w``. Widths
    halve as resolution doubles; digits 8×8 (base 2×2) and MNIST 28×28 (base 7×7) get two
    blocks, 32 px three, 64 px four, 128 px five (base 4×4).
    """

    base: tuple[int, int]
    blocks: int

    def widths(self, width: int) -> list[int]:
        return [width * min(2 ** k, MAX_WIDTH_FACTOR) for k in range(self.blocks)]


def scale_plan(image_shape: ImageShape) -> ScalePlan:
    """One stride-2 block per factor of 2 while the shorter side stays >= 4 px (at least two)."""
    _, height, width = image_shape
    h, w, blocks = height, width, 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= MIN_BASE:
        h, w, blocks = h // 2, w // 2, blocks + 1
    while blocks < MIN_BLOCKS and h % 2 == 0 and w % 2 == 0:
        h, w, blocks = h // 2, w // 2, blocks + 1
    if blocks < MIN_BLOCKS:
        raise DgmError(f"image size {height}x{width} must be divisible by 4 for these models")
    return ScalePlan((h, w), blocks)


class GenerativeModel(nn.Module):
    """A generative model that owns its training step and its sampler.

    Subclasses set ``family``, ``config_class`` and ``networks`` (the attribute names of the
    networks that are trained and saved), build those networks in ``__init__`` and
    implement :meth:`make_optimizers`, :meth:`train_step`, :meth:`validation_step` and
    :meth:`sample`. Conditional models (config ``conditional: true``) take class labels in
    training and sampling.
    """

    family: ClassVar[str]
    # What a tuning trial of the family is judged by when ``tune.metric`` names nothing.
    validation_metric: ClassVar[str] = "fid"
    config_class: ClassVar[type[ModelConfigBase]]
    networks: ClassVar[tuple[str, ...]]
    ddp_kwargs: ClassVar[dict[str, dict[str, Any]]] = {}
    # bf16 autocast may run its training step (off for steps that need full precision)
    supports_autocast: ClassVar[bool] = True

    def __init__(self, config: ModelConfigBase, image_shape: ImageShape):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}

    # --- set-up -------------------------------------------------------------------------
    def setup(self, wrap: WrapFn | None = None, schedule: ScheduleConfig | None = None,
              epochs: int = 1) -> GenerativeModel:
        """Wrap each network for distributed training (if ``wrap``), create the optimizers
        and, with ``schedule``, their learning-rate schedulers over ``epochs``."""
        if wrap is not None:
            for name in self.networks:
                setattr(self, name, wrap(getattr(self, name), self.ddp_kwargs.get(name, {})))
        self.optimizers = self.make_optimizers()
        self.schedulers = {}
        if schedule is not None:
            for key, opt in self.optimizers.items():
                scheduler = make_scheduler(opt, schedule, epochs)
                if scheduler is not None:
                    self.schedulers[key] = scheduler
        return self

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def end_epoch(self) -> dict[str, float]:
        """Step the learning-rate schedulers; return the learning rates the epoch used."""
        used = {f"lr_{key}": opt.param_groups[0]["lr"] for key, opt in self.optimizers.items()}
        for scheduler in self.schedulers.values():
            scheduler.step()
        return used

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def conditional(self) -> bool:
        return bool(getattr(self.config, "conditional", False))

    @property
    def num_classes(self) -> int | None:
        """Classes a conditional model is trained on (None for unconditional models)."""
        return int(self.config.num_classes) if self.conditional else None

    # --- training and sampling ----------------------------------------------------------
    def optimize(self, name: str, loss: torch.Tensor) -> float:
        """Backward ``loss`` and step optimizer ``name``, clipping the gradient norm to
        ``grad_clip``; a norm above ``max_grad_norm`` (or not finite) raises
        :class:`TrainingDiverged` before the step. Returns the norm before clipping.
        The backward pass runs outside any autocast region (as PyTorch recommends)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=loss.device.type, enabled=False):
            loss.float().backward()
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

    def validation_step(self, images: torch.Tensor,
                        labels: torch.Tensor | None) -> dict[str, float]:
        """Held-out metrics of one batch (no update); ``loss`` is the one early stopping uses
        by default. Runs under ``torch.no_grad`` and eval mode."""
        raise NotImplementedError

    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None,
               latents: torch.Tensor | None = None) -> torch.Tensor:
        """``num_samples`` images in [0, 1], shape (N, C, H, W), on the CPU; conditional
        models draw images of ``labels`` (default: classes drawn uniformly by ``generator``);
        models with a latent space decode the given ``latents`` (N, latent_dim) instead of
        drawing them."""
        raise NotImplementedError

    def latents(self, num_samples: int, dim: int, generator: torch.Generator | None,
                given: torch.Tensor | None = None):
        """Standard-normal latents drawn on the CPU (device-independent), moved to the model;
        ``given`` latents are checked (N, dim), finite, and used instead."""
        if given is None:
            z = torch.randn(num_samples, dim, generator=generator)
        else:
            z = torch.as_tensor(given, dtype=torch.float32)
            if tuple(z.shape) != (num_samples, dim):
                raise DgmError(f"latents must have shape ({num_samples}, {dim}), "
                               f"got {tuple(z.shape)}")
            if not torch.isfinite(z).all():
                raise DgmError("latents must be finite numbers")
        return z.to(self.device)

    def sample_labels(self, num_samples: int, generator: torch.Generator | None,
                      labels: torch.Tensor | None) -> torch.Tensor | None:
        """The class labels of a sampling call, on the model's device (None when
        unconditional); errors for labels given to an unconditional model or out of range."""
        if not self.conditional:
            if labels is not None:
                raise DgmError(f"this {self.family} model is not conditional: it takes no labels")
            return None
        if labels is None:
            labels = torch.randint(self.num_classes, (num_samples,), generator=generator)
        labels = torch.as_tensor(labels).long().reshape(-1)
        if labels.numel() == 1 and num_samples != 1:
            labels = labels.expand(num_samples)
        if labels.numel() != num_samples:
            raise DgmError(f"got {labels.numel()} labels for {num_samples} samples")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DgmError(f"labels must lie in 0..{self.num_classes - 1}")
        return labels.to(self.device)

    def training_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels a conditional model trains on (an error if the data has none)."""
        if not self.conditional:
            return None
        if labels is None:
            raise DgmError(f"a conditional {self.family} needs labelled training data")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DgmError(f"training labels must lie in 0..{self.num_classes - 1} "
                           f"(num_classes {self.num_classes})")
        return labels.long()

    # --- state --------------------------------------------------------------------------
    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """Network weights, free of any distributed wrapper, on the CPU."""
        return {
            name: {k: v.detach().cpu().clone()
                   for k, v in unwrap(getattr(self, name)).state_dict().items()}
            for name in self.networks
        }

    def load_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        for name in self.networks:
            unwrap(getattr(self, name)).load_state_dict(weights[name])

    def training_state(self) -> dict[str, Any]:
        """Weights plus optimizer and scheduler state: everything needed to resume."""
        return {
            "weights": self.weights(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_weights(state["weights"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, scheduler in self.schedulers.items():
            if key in state.get("schedulers", {}):
                scheduler.load_state_dict(state["schedulers"][key])
