"""Variational autoencoders: MLP or convolutional, β-VAE, conditional, IWAE objective.

``architecture``: ``conv`` (two stride-2 convolutions each way, sized from the image) or
``mlp`` (``hidden`` layer widths, e.g. 784-200-200-50 as in Burda et al. 2015).
``beta`` weights the KL term (β-VAE, Higgins et al. 2017), ramped from 0 over
``kl_warmup_steps`` (KL annealing); ``iwae_samples`` k > 1 trains on the importance-weighted
bound instead of the ELBO (IWAE). ``likelihood``: ``bernoulli`` (optionally on dynamically
binarized pixels, ``binarize``) or ``gaussian`` (continuous pixels, learned scale per
channel). ``conditional`` VAEs (Sohn et al. 2015) see the one-hot class in encoder and decoder.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.distributions import Normal

from dgm.models.base import (
    MAX_LATENT,
    MAX_UNITS,
    MAX_WIDTH,
    ConditionalConfigBase,
    GenerativeModel,
    ImageShape,
    bernoulli,
    eval_mode,
    one_hot,
    scale_plan,
    unwrap,
)

# Importance samples × images × pixels evaluated at once by log_likelihood.
_LIKELIHOOD_CHUNK = 2 ** 24


class VAEConfig(ConditionalConfigBase):
    family: Literal["vae"] = "vae"
    architecture: Literal["conv", "mlp"] = "conv"
    latent_dim: int = Field(16, gt=0, le=MAX_LATENT)
    width: int = Field(32, gt=0, le=MAX_WIDTH,
                       description="conv: channels of the first convolution")
    hidden: list[Annotated[int, Field(gt=0, le=MAX_UNITS)]] = Field(
        default_factory=lambda: [200, 200], description="mlp: hidden layer widths of the encoder")
    lr: float = Field(1e-3, gt=0, le=1)
    beta: float = Field(1.0, ge=0, le=1e4)
    kl_warmup_steps: int = Field(0, ge=0, le=10**9,
                                 description="β ramps linearly from 0 over these")
    iwae_samples: int = Field(1, gt=0, le=10_000, description="k > 1: train on the IWAE bound")
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    binarize: bool = Field(False, description="bernoulli: dynamic binarization of pixels")

    @model_validator(mode="after")
    def _consistent(self) -> VAEConfig:
        if self.binarize and self.likelihood != "bernoulli":
            raise ValueError("binarize needs likelihood: bernoulli")
        if self.iwae_samples > 1 and (self.beta != 1 or self.kl_warmup_steps):
            raise ValueError("beta and kl_warmup_steps apply to the ELBO (iwae_samples: 1)")
        if not self.hidden or min(self.hidden) <= 0:
            raise ValueError("hidden must list positive layer widths")
        return self


def _mlp(sizes: list[int], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return layers


class VAENet(nn.Module):
    """Encoder q(z|x[, y]) and decoder p(x|z[, y]) of either architecture."""

    def __init__(self, cfg: VAEConfig, image_shape: ImageShape):
        super().__init__()
        self.image_shape = tuple(image_shape)
        channels, height, width = image_shape
        self.classes = cfg.num_classes if cfg.conditional else 0
        cond, latent = self.classes, cfg.latent_dim
        if cfg.architecture == "mlp":
            pixels = channels * height * width
            self.features = nn.Sequential(nn.Flatten(), *_mlp([pixels, *cfg.hidden], cfg.dropout))
            feature_dim = cfg.hidden[-1]
            self.project = nn.Sequential(*_mlp([latent + cond, *reversed(cfg.hidden)],
                                               cfg.dropout))
            self.decoder = nn.Sequential(nn.Linear(cfg.hidden[0], pixels),
                                         nn.Unflatten(1, tuple(image_shape)))
        else:
            plan = scale_plan(image_shape)  # one stride-2 stage per factor of 2
            widths = plan.widths(cfg.width)
            feature_dim = widths[-1] * plan.base[0] * plan.base[1]
            down: list[nn.Module] = []
            for cin, cout in zip([channels, *widths[:-1]], widths, strict=True):
                down += [nn.Conv2d(cin, cout, 4, 2, 1), nn.ReLU(True)]
            self.features = nn.Sequential(
                *down, nn.Flatten(), nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity())
            self.project = nn.Sequential(nn.Linear(latent + cond, feature_dim), nn.ReLU(True),
                                         nn.Unflatten(1, (widths[-1], *plan.base)))
            up: list[nn.Module] = []
            for k in range(len(widths) - 1, 0, -1):
                up += [nn.ConvTranspose2d(widths[k], widths[k - 1], 4, 2, 1), nn.ReLU(True)]
            self.decoder = nn.Sequential(*up, nn.ConvTranspose2d(widths[0], channels, 4, 2, 1))
        self.posterior = nn.Linear(feature_dim + cond, 2 * latent)
        # the Gaussian likelihood's log standard deviation, one per channel
        self.log_scale = nn.Parameter(torch.full((channels, 1, 1), math.log(0.1)),
                                      requires_grad=cfg.likelihood == "gaussian")
        # optimisation steps so far (KL annealing), saved with the weights
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _with_labels(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if not self.classes:
            return h
        y = one_hot(labels, self.classes).to(h.dtype)
        if h.dim() == 3:  # (K, N, D) latents: the same label for every sample of an image
            y = y.expand(h.shape[0], -1, -1)
        return torch.cat([h, y], dim=-1)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """Mean and log-variance of q(z|x[, y])."""
        mu, logvar = self.posterior(self._with_labels(self.features(x), labels)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel logits of p(x|z[, y]) (Bernoulli logits, or the Gaussian mean's logit); ``z``
        is (N, D) or (K, N, D), the output (N, C, H, W) or (K, N, C, H, W)."""
        h = self._with_labels(z, labels)
        lead = h.shape[:-1]
        out = self.decoder(self.project(h.reshape(-1, h.shape[-1])))
        return out.view(*lead, *self.image_shape)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, samples: int = 1):
        """(pixel logits (K, N, C, H, W), z (K, N, D), mu, logvar, log_scale) for K = ``samples``
        reparameterised draws of z ~ q(z|x)."""
        mu, logvar = self.encode(x, labels)
        eps = torch.randn((samples, *mu.shape), device=mu.device, dtype=mu.dtype)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z, labels), z, mu, logvar, self.log_scale


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=-1)


class VAE(GenerativeModel):
    """VAE (Kingma & Welling 2014) and its variants, chosen by :class:`VAEConfig`."""

    family = "vae"
    validation_metric = "nll_nats"  # its likelihood on the val split
    config_class = VAEConfig
    networks = ("net",)

    def __init__(self, config: VAEConfig, image_shape: ImageShape):
        super().__init__(config, image_shape)
        self.net = VAENet(config, image_shape)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in self.net.parameters() if p.requires_grad]
        return {"net": torch.optim.AdamW(params, lr=self.config.lr,
                                         weight_decay=self.config.weight_decay)}

    # --- the objective -------------------------------------------------------------------
    def log_px(self, logits: torch.Tensor, images: torch.Tensor,
               log_scale: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels; ``logits`` may carry leading sample dimensions."""
        target = images.expand_as(logits)
        if self.config.likelihood == "gaussian":
            log_p = Normal(torch.sigmoid(logits), log_scale.exp()).log_prob(target)
        else:
            log_p = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return log_p.flatten(-3).sum(-1)

    def negative_elbo(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        """Per-example −log p(x|z) for one z ~ q(z|x), and the analytic KL (nats)."""
        logits, _, mu, logvar, log_scale = self.net(images, labels)
        return -self.log_px(logits, images, log_scale)[0], gaussian_kl(mu, logvar)

    def kl_weight(self, steps: int) -> float:
        """β, ramped linearly from 0 over ``kl_warmup_steps`` (KL annealing)."""
        warmup = self.config.kl_warmup_steps
        return self.config.beta * (min(1.0, steps / warmup) if warmup else 1.0)

    def objective(self, images: torch.Tensor, labels: torch.Tensor | None,
                  kl_weight: float) -> dict[str, torch.Tensor]:
        """Per-batch ``loss`` (negative ELBO with weighted KL, or negative IWAE bound), and
        the mean ``recon`` and ``kl`` terms (nats per image)."""
        k = self.config.iwae_samples
        logits, z, mu, logvar, log_scale = self.net(images, labels, k)
        log_px = self.log_px(logits, images, log_scale)  # (K, N)
        kl = gaussian_kl(mu, logvar)
        if k == 1:
            loss = (-log_px[0] + kl_weight * kl).mean()
        else:
            std = torch.exp(0.5 * logvar)
            log_w = (log_px + Normal(0.0, 1.0).log_prob(z).sum(-1)
                     - Normal(mu, std).log_prob(z).sum(-1))
            loss = -(torch.logsumexp(log_w, dim=0) - math.log(k)).mean()
        return {"loss": loss, "recon": -log_px.mean(), "kl": kl.mean()}

    def prepare(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Dynamically binarized pixels when ``binarize`` (a fresh draw on each call)."""
        return bernoulli(images, generator) if self.config.binarize else images

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        labels = self.training_labels(labels)
        steps = unwrap(self.net).steps
        terms = self.objective(self.prepare(images), labels, self.kl_weight(int(steps)))
        self.optimize("net", terms["loss"])
        steps += 1
        return {key: value.item() for key, value in terms.items()}

    @torch.no_grad()
    def validation_step(self, images: torch.Tensor,
                        labels: torch.Tensor | None) -> dict[str, float]:
        terms = self.objective(self.prepare(images), self.training_labels(labels), 1.0)
        return {key: value.item() for key, value in terms.items()}

    # --- likelihood and sampling ---------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, images: torch.Tensor, num_samples: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-sampled log p(x) (IWAE, q(z|x) as proposal), one value per image:
        log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x) with K = ``num_samples``. Binarizing models
        score a stochastic binarization of ``images`` (drawn by ``generator``); conditional
        models marginalise the class: log p(x) = log Σ_y p(x|y) / C."""
        images = self.prepare(images, generator)
        with eval_mode(self.net):
            if not self.conditional:
                return self._log_likelihood_given(images, None, num_samples, generator)
            per_class = [
                self._log_likelihood_given(
                    images, torch.full((images.shape[0],), y, device=images.device),
                    num_samples, generator)
                for y in range(self.num_classes)
            ]
        return torch.logsumexp(torch.stack(per_class), dim=0) - math.log(self.num_classes)

    def _log_likelihood_given(self, images, labels, num_samples, generator) -> torch.Tensor:
        net = unwrap(self.net)
        mu, logvar = net.encode(images, labels)
        std = torch.exp(0.5 * logvar)
        chunk = max(1, _LIKELIHOOD_CHUNK // max(1, images[0].numel() * images.shape[0]))
        parts = []
        for start in range(0, num_samples, chunk):
            count = min(chunk, num_samples - start)
            eps = torch.randn((count, *mu.shape), generator=generator, dtype=mu.dtype)
            z = mu + std * eps.to(mu.device)  # (K, N, D)
            log_q = Normal(mu, std).log_prob(z).sum(-1)
            log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_px = self.log_px(net.decode(z, labels), images, net.log_scale)
            parts.append(log_px + log_prior - log_q)
        return torch.logsumexp(torch.cat(parts), dim=0) - math.log(num_samples)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None,
               latents: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's mean image for z ~ N(0, I) or the given ``latents`` (pixel
        probabilities for Bernoulli)."""
        net = unwrap(self.net)
        z = self.latents(num_samples, self.config.latent_dim, generator, latents)
        labels = self.sample_labels(num_samples, generator, labels)
        with eval_mode(net):
            return torch.sigmoid(net.decode(z, labels)).float().cpu()
