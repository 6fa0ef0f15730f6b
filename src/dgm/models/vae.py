"""Convolutional VAE with a Bernoulli likelihood, sized from the image shape."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.distributions import Normal

from dgm.models.base import GenerativeModel, ImageShape, ModelConfigBase, require_divisible_by_4


class VAEConfig(ModelConfigBase):
    family: Literal["vae"] = "vae"
    latent_dim: int = Field(16, gt=0)
    width: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(1.0, ge=0)


class ConvVAENet(nn.Module):
    """Encoder q(z|x) and decoder p(x|z); ``forward`` returns (logits, mu, logvar)."""

    def __init__(self, latent_dim: int, width: int, image_shape: ImageShape):
        super().__init__()
        channels = image_shape[0]
        self.base = require_divisible_by_4(image_shape)
        self.width = width
        flat = 2 * width * self.base[0] * self.base[1]
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),
            nn.ReLU(True),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.ReLU(True),
            nn.Flatten(),
            nn.Linear(flat, 2 * latent_dim),
        )
        self.project = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU(True))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.ReLU(True),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of p(x|z)."""
        h = self.project(z).view(z.shape[0], 2 * self.width, *self.base)
        return self.decoder(h)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


class ConvVAE(GenerativeModel):
    """VAE (Kingma & Welling 2014) with a β-weighted KL term."""

    family = "vae"
    config_class = VAEConfig
    networks = ("net",)

    def __init__(self, config: VAEConfig, image_shape: ImageShape):
        super().__init__(config, image_shape)
        self.net = ConvVAENet(config.latent_dim, config.width, image_shape)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.Adam(self.net.parameters(), lr=self.config.lr)}

    def negative_elbo(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example reconstruction term and KL term (nats)."""
        logits, mu, logvar = self.net(images)
        recon = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
        return recon.flatten(1).sum(1), gaussian_kl(mu, logvar)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        recon, kl = self.negative_elbo(images)
        loss = (recon + self.config.beta * kl).mean()
        self.optimize("net", loss)
        return {"loss": loss.item(), "recon": recon.mean().item(), "kl": kl.mean().item()}

    @torch.no_grad()
    def log_likelihood(self, images: torch.Tensor, num_samples: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-sampled log p(x) (IWAE, q(z|x) as proposal), one value per image:
        log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x) with K = ``num_samples``."""
        net = getattr(self.net, "module", self.net)
        mu, logvar = net.encode(images)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((num_samples, *mu.shape), generator=generator, dtype=mu.dtype)
        z = mu + std * eps.to(mu.device)  # (K, N, D)
        log_q = Normal(mu, std).log_prob(z).sum(-1)
        log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
        logits = net.decode(z.flatten(0, 1)).view(num_samples, *images.shape)
        log_px = -F.binary_cross_entropy_with_logits(
            logits, images.expand_as(logits), reduction="none").flatten(2).sum(-1)
        return torch.logsumexp(log_px + log_prior - log_q, dim=0) - math.log(num_samples)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        net = getattr(self.net, "module", self.net)
        z = self.latents(num_samples, self.config.latent_dim, generator)
        return torch.sigmoid(net.decode(z)).cpu()
