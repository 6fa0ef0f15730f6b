"""DCGAN with the non-saturating GAN loss, sized from the image shape."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

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
    """Two stride-2 convolutions with BatchNorm and LeakyReLU, then a linear logit."""

    def __init__(self, width: int, image_shape: ImageShape):
        super().__init__()
        channels = image_shape[0]
        bh, bw = require_divisible_by_4(image_shape)
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            nn.Linear(2 * width * bh * bw, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class DCGAN(GenerativeModel):
    """DCGAN trained with the non-saturating loss (Goodfellow et al. 2014)."""

    family = "gan"
    config_class = GANConfig
    networks = ("G", "D")
    # D runs on real and fake batches before one backward: DDP must not re-broadcast buffers.
    ddp_kwargs = {"D": {"broadcast_buffers": False}}

    def __init__(self, config: GANConfig, image_shape: ImageShape):
        super().__init__(config, image_shape)
        self.G = Generator(config.latent_dim, config.width, image_shape)
        self.D = Discriminator(config.width, image_shape)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg: GANConfig = self.config
        betas = (cfg.beta1, cfg.beta2)
        return {
            "G": torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas),
            "D": torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas),
        }

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        real = images * 2 - 1
        z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
        fake = self.G(z)

        d_real = self.D(real)
        d_fake = self.D(fake.detach())
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()

        loss_g = F.softplus(-self.D(fake)).mean()
        self.optimizers["G"].zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizers["G"].step()
        return {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_real": torch.sigmoid(d_real).mean().item(),
            "d_fake": torch.sigmoid(d_fake).mean().item(),
        }

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        g = unwrap(self.G)
        with eval_mode(g):
            z = self.latents(num_samples, self.config.latent_dim, generator)
            return ((g(z) + 1) / 2).clamp_(0, 1).cpu()
