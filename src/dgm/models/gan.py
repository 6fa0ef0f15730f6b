"""DCGAN-shaped GANs sized from the image shape, with the loss chosen by config.

Losses (``loss``): ``nonsaturating`` (DCGAN, Goodfellow et al. 2014), ``lsgan`` (least
squares, Mao et al. 2017), ``wgan-gp`` (Wasserstein critic with gradient penalty, Gulrajani
et al. 2017: ``gp_weight`` λ, ``n_critic`` critic steps per generator step, no BatchNorm in
the critic) and ``hinge`` (with spectral normalisation of the discriminator, Miyato et al.
2018). ``lr_g`` ≠ ``lr_d`` gives the two time-scale update rule (TTUR).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from dgm.models.base import (
    GenerativeModel,
    ImageShape,
    ModelConfigBase,
    eval_mode,
    require_divisible_by_4,
    unwrap,
)


class GANConfig(ModelConfigBase):
    family: Literal["gan"] = "gan"
    latent_dim: int = Field(32, gt=0)
    width: int = Field(64, gt=0)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    loss: Literal["nonsaturating", "lsgan", "wgan-gp", "hinge"] = "nonsaturating"
    gp_weight: float = Field(10.0, ge=0, description="λ of the WGAN-GP gradient penalty")
    n_critic: int = Field(1, gt=0, description="discriminator steps per generator step")
    spectral_norm: bool | None = Field(
        None, description="spectral norm in D (default: on for hinge, off otherwise)")

    @property
    def use_spectral_norm(self) -> bool:
        return self.loss == "hinge" if self.spectral_norm is None else self.spectral_norm

    @property
    def use_batchnorm_in_d(self) -> bool:
        """BatchNorm breaks the per-sample gradient penalty; spectral norm replaces it."""
        return self.loss != "wgan-gp" and not self.use_spectral_norm


class Generator(nn.Module):
    """z → linear → (2w, H/4, W/4) → two stride-2 transposed convolutions → tanh image."""

    def __init__(self, latent_dim: int, width: int, image_shape: ImageShape):
        super().__init__()
        channels = image_shape[0]
        self.base = require_divisible_by_4(image_shape)
        self.width = width
        self.project = nn.Sequential(
            nn.Linear(latent_dim, 2 * width * self.base[0] * self.base[1], bias=False),
            nn.BatchNorm1d(2 * width * self.base[0] * self.base[1]),
            nn.ReLU(True),
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], 2 * self.width, *self.base)
        return self.upsample(h)


class Discriminator(nn.Module):
    """Two stride-2 convolutions (BatchNorm optional) with LeakyReLU, then a linear logit;
    every layer spectrally normalised when ``sn``."""

    def __init__(self, width: int, image_shape: ImageShape, batchnorm: bool = True,
                 sn: bool = False):
        super().__init__()
        channels = image_shape[0]
        bh, bw = require_divisible_by_4(image_shape)
        wrap = spectral_norm if sn else (lambda layer: layer)
        self.net = nn.Sequential(
            wrap(nn.Conv2d(channels, width, 4, 2, 1)),
            nn.LeakyReLU(0.2, True),
            wrap(nn.Conv2d(width, 2 * width, 4, 2, 1, bias=not batchnorm)),
            nn.BatchNorm2d(2 * width) if batchnorm else nn.Identity(),
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            wrap(nn.Linear(2 * width * bh * bw, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


# Losses by name: (discriminator loss of (d_real, d_fake), generator loss of d_fake).
GanLoss = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                Callable[[torch.Tensor], torch.Tensor]]
LOSSES: dict[str, GanLoss] = {
    "nonsaturating": (lambda r, f: F.softplus(-r).mean() + F.softplus(f).mean(),
                      lambda f: F.softplus(-f).mean()),
    "lsgan": (lambda r, f: 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean(),
              lambda f: 0.5 * ((f - 1) ** 2).mean()),
    "wgan-gp": (lambda r, f: f.mean() - r.mean(), lambda f: -f.mean()),
    "hinge": (lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(), lambda f: -f.mean()),
}


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: E[(‖∇ₓ D(x̂)‖₂ − 1)²] at x̂ = α·real + (1 − α)·fake, α ~ U(0, 1) per sample."""
    if alpha is None:
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


class DCGAN(GenerativeModel):
    """DCGAN architecture trained with the configured loss (see the module docstring)."""

    family = "gan"
    config_class = GANConfig
    networks = ("G", "D")
    # D runs on real and fake batches before one backward: DDP must not re-broadcast buffers.
    ddp_kwargs = {"D": {"broadcast_buffers": False}}

    def __init__(self, config: GANConfig, image_shape: ImageShape):
        super().__init__(config, image_shape)
        self.G = Generator(config.latent_dim, config.width, image_shape)
        self.D = Discriminator(config.width, image_shape, batchnorm=config.use_batchnorm_in_d,
                               sn=config.use_spectral_norm)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg: GANConfig = self.config
        betas = (cfg.beta1, cfg.beta2)
        return {
            "G": torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas),
            "D": torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas),
        }

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        cfg: GANConfig = self.config
        d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
        real = images * 2 - 1
        for _ in range(cfg.n_critic):  # the same real batch, fresh latents each critic step
            z = torch.randn(real.shape[0], cfg.latent_dim, device=real.device)
            fake = self.G(z)
            d_real = self.D(real)
            d_fake = self.D(fake.detach())
            loss_d = d_loss_fn(d_real, d_fake)
            penalty = None
            if cfg.loss == "wgan-gp":
                penalty = gradient_penalty(self.D, real, fake.detach())
                loss_d = loss_d + cfg.gp_weight * penalty
            self.optimize("D", loss_d)

        loss_g = g_loss_fn(self.D(fake))
        self.optimize("G", loss_g)
        # D's outputs: probabilities for the classic loss, raw scores for the others
        shown = torch.sigmoid if cfg.loss == "nonsaturating" else torch.as_tensor
        metrics = {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_real": shown(d_real).mean().item(),
            "d_fake": shown(d_fake).mean().item(),
        }
        if penalty is not None:
            metrics["gradient_penalty"] = penalty.item()
        return metrics

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        g = unwrap(self.G)
        with eval_mode(g):
            z = self.latents(num_samples, self.config.latent_dim, generator)
            return ((g(z) + 1) / 2).clamp_(0, 1).cpu()
