"""GANs sized from the image shape, with the architecture and the loss chosen by config.

Architectures (``architecture``): ``dcgan`` (Radford et al. 2016) and ``resnet`` (the
SNGAN residual blocks of Miyato et al. 2018, for 32 px and up); both have one stride-2
block per factor of 2 between the image and a 4–7 px base (:func:`scale_plan`).

Losses (``loss``): ``nonsaturating`` (DCGAN, Goodfellow et al. 2014), ``lsgan`` (least
squares, Mao et al. 2017), ``wgan-gp`` (Wasserstein critic with gradient penalty, Gulrajani
et al. 2017: ``gp_weight`` λ, ``n_critic`` critic steps per generator step, no BatchNorm in
the critic) and ``hinge`` (with spectral normalisation of the discriminator, Miyato et al.
2018). ``lr_g`` ≠ ``lr_d`` gives the two time-scale update rule (TTUR).

``conditional``: class-conditional G (one-hot label beside z) and a projection discriminator
(Miyato & Koyama 2018). InfoGAN (Chen et al. 2016): ``info_categorical`` K-way and
``info_continuous`` uniform codes feed G, a Q head on D's features predicts them, and
``info_weight`` × the mutual-information loss joins both players' losses. ``pack`` m > 1:
D sees m samples stacked along the channels (PacGAN, Lin et al. 2018), penalising
mode collapse. ``ema_decay``
keeps an exponential moving average of G's weights, which sampling (and so evaluation and
registration) uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from dgm.models.base import (
    MAX_LATENT,
    MAX_WIDTH,
    ConditionalConfigBase,
    GenerativeModel,
    ImageShape,
    eval_mode,
    one_hot,
    unwrap,
)
from dgm.models.gan_networks import Discriminator, Generator


class GANConfig(ConditionalConfigBase):
    family: Literal["gan"] = "gan"
    latent_dim: int = Field(32, gt=0, le=MAX_LATENT)
    width: int = Field(64, gt=0, le=MAX_WIDTH,
                       description="channels of the stage nearest the image")
    architecture: Literal["dcgan", "resnet"] = Field(
        "dcgan", description="dcgan: (transposed) stride-2 convolutions; resnet: SNGAN "
        "residual blocks (images of 32 px and up)")
    lr_g: float = Field(2e-4, gt=0, le=1)
    lr_d: float = Field(2e-4, gt=0, le=1)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    loss: Literal["nonsaturating", "lsgan", "wgan-gp", "hinge"] = "nonsaturating"
    gp_weight: float = Field(10.0, ge=0, le=1e4, description="λ of the WGAN-GP gradient penalty")
    n_critic: int = Field(1, gt=0, le=100, description="discriminator steps per generator step")
    spectral_norm: bool | None = Field(
        None, description="spectral norm in D (default: on for hinge, off otherwise)")
    info_categorical: int = Field(0, ge=0, le=1000,
                                  description="InfoGAN: categories of the code (0: none)")
    info_continuous: int = Field(0, ge=0, le=1000, description="InfoGAN: continuous U(-1, 1) codes")
    info_weight: float = Field(1.0, ge=0, le=1e3,
                               description="InfoGAN: λ of the mutual-information loss")
    ema_decay: float | None = Field(None, gt=0, lt=1,
                                    description="EMA of G's weights for sampling (null: off)")
    pack: int = Field(1, gt=0, le=64, description="PacGAN: D judges this many samples at once")

    @model_validator(mode="after")
    def _packing_is_unconditional(self) -> GANConfig:
        if self.pack > 1 and (self.conditional or self.q_dim):
            raise ValueError("pack > 1 (PacGAN) needs an unconditional GAN without InfoGAN codes")
        return self

    @property
    def code_dim(self) -> int:
        """Inputs of G beside z: the one-hot class and the InfoGAN codes."""
        return ((self.num_classes if self.conditional else 0) + self.info_categorical
                + self.info_continuous)

    @property
    def q_dim(self) -> int:
        """Outputs of the InfoGAN Q head: category logits and continuous-code means."""
        return self.info_categorical + self.info_continuous

    @property
    def use_spectral_norm(self) -> bool:
        return self.loss == "hinge" if self.spectral_norm is None else self.spectral_norm

    @property
    def use_batchnorm_in_d(self) -> bool:
        """BatchNorm breaks the per-sample gradient penalty; spectral norm replaces it."""
        return self.loss != "wgan-gp" and not self.use_spectral_norm


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


def info_loss(q_out: torch.Tensor, categories: torch.Tensor | None,
              continuous: torch.Tensor | None) -> torch.Tensor:
    """InfoGAN's variational mutual-information loss: the cross-entropy of the categorical
    code plus the unit-variance Gaussian negative log-likelihood of the continuous codes
    (without its constant), per example then averaged. ``q_out`` holds the category logits,
    then the continuous means."""
    num_categories = 0 if categories is None else q_out.shape[1] - (
        0 if continuous is None else continuous.shape[1])
    loss = q_out.new_zeros(())
    if categories is not None:
        loss = loss + F.cross_entropy(q_out[:, :num_categories], categories)
    if continuous is not None:
        means = q_out[:, num_categories:]
        loss = loss + 0.5 * (means - continuous).pow(2).sum(1).mean()
    return loss


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
    ddp_kwargs = {"D": {"forward_sync_buffers": False}}

    def __init__(self, config: GANConfig, image_shape: ImageShape):
        super().__init__(config, image_shape)
        self.G = Generator(config.latent_dim + config.code_dim, config.width, image_shape,
                           config.architecture)
        channels, height, width = image_shape
        self.D = Discriminator(config.width, (channels * config.pack, height, width),
                               architecture=config.architecture,
                               batchnorm=config.use_batchnorm_in_d,
                               sn=config.use_spectral_norm, dropout=config.dropout,
                               num_classes=config.num_classes if config.conditional else 0,
                               q_dim=config.q_dim)
        self.G_ema = self._new_ema() if config.ema_decay else None

    def _new_ema(self) -> AveragedModel:
        return AveragedModel(unwrap(self.G), use_buffers=True,
                             multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay))

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg: GANConfig = self.config
        betas = (cfg.beta1, cfg.beta2)
        return {
            "G": torch.optim.AdamW(self.G.parameters(), lr=cfg.lr_g, betas=betas,
                                   weight_decay=cfg.weight_decay),
            "D": torch.optim.AdamW(self.D.parameters(), lr=cfg.lr_d, betas=betas,
                                   weight_decay=cfg.weight_decay),
        }

    # --- inputs of G ---------------------------------------------------------------------
    def generator_input(self, num: int, labels: torch.Tensor | None,
                        generator: torch.Generator | None = None,
                        z: torch.Tensor | None = None):
        """(G's input: z, then one-hot class and InfoGAN codes; categorical code; continuous
        codes), drawn on the CPU when ``generator`` is given (device-independent samples);
        ``z``: the given latents instead of drawn ones."""
        cfg: GANConfig = self.config

        def draw(fn, *shape_args, **kw):
            if generator is None:
                return fn(*shape_args, device=self.device, **kw)
            return fn(*shape_args, generator=generator, **kw).to(self.device)

        parts = [draw(torch.randn, num, cfg.latent_dim) if z is None
                 else self.latents(num, cfg.latent_dim, None, z)]
        if labels is not None:
            parts.append(one_hot(labels, cfg.num_classes))
        categories = continuous = None
        if cfg.info_categorical:
            categories = draw(torch.randint, cfg.info_categorical, (num,))
            parts.append(one_hot(categories, cfg.info_categorical))
        if cfg.info_continuous:
            continuous = draw(torch.rand, num, cfg.info_continuous) * 2 - 1
            parts.append(continuous)
        return torch.cat(parts, dim=1), categories, continuous

    def packed(self, images: torch.Tensor) -> torch.Tensor:
        """PacGAN: groups of ``pack`` images stacked along the channels (a remainder of the
        batch that does not fill a group is left out)."""
        m = self.config.pack
        if m == 1:
            return images
        n, c, h, w = images.shape
        return images[: n - n % m].reshape(n // m, m * c, h, w)

    def split_d(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D's output → (logits, Q outputs or None)."""
        return (out[:, 0], out[:, 1:]) if self.config.q_dim else (out, None)

    def judge(self, images: torch.Tensor, labels: torch.Tensor | None):
        """D's (logits, Q outputs) of a batch, packed for PacGAN."""
        return self.split_d(self.D(self.packed(images), labels))

    # --- training ------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        cfg: GANConfig = self.config
        d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
        labels = self.training_labels(labels)
        real = images * 2 - 1
        n = real.shape[0]
        for _ in range(cfg.n_critic):  # the same real batch, fresh latents each critic step
            z, categories, continuous = self.generator_input(n, labels)
            fake = self.G(z)
            d_real, _ = self.judge(real, labels)
            d_fake, q_fake = self.judge(fake.detach(), labels)
            loss_d = d_loss_fn(d_real, d_fake)
            penalty = mutual_info = None
            if cfg.loss == "wgan-gp":
                penalty = gradient_penalty(lambda x: self.split_d(self.D(x, labels))[0],
                                           self.packed(real), self.packed(fake.detach()))
                loss_d = loss_d + cfg.gp_weight * penalty
            if q_fake is not None:
                mutual_info = info_loss(q_fake, categories, continuous)
                loss_d = loss_d + cfg.info_weight * mutual_info
            self.optimize("D", loss_d)

        d_gen, q_gen = self.judge(fake, labels)
        loss_g = g_loss_fn(d_gen)
        if q_gen is not None:
            mutual_info = info_loss(q_gen, categories, continuous)
            loss_g = loss_g + cfg.info_weight * mutual_info
        self.optimize("G", loss_g)
        if self.G_ema is not None:
            self.G_ema.update_parameters(unwrap(self.G))
        # D's outputs: probabilities for the classic loss, raw scores for the others
        shown = torch.sigmoid if cfg.loss == "nonsaturating" else torch.as_tensor
        metrics = {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_real": shown(d_real.float()).mean().item(),
            "d_fake": shown(d_fake.float()).mean().item(),
        }
        if penalty is not None:
            metrics["gradient_penalty"] = penalty.item()
        if mutual_info is not None:
            metrics["info_loss"] = mutual_info.item()
        return metrics

    @torch.no_grad()
    def validation_step(self, images: torch.Tensor,
                        labels: torch.Tensor | None) -> dict[str, float]:
        """D's loss on held-out real images against fresh fakes (``loss``; a rising value
        while the training ``loss_d`` falls means D memorises the training set)."""
        cfg: GANConfig = self.config
        d_loss_fn, _ = LOSSES[cfg.loss]
        labels = self.training_labels(labels)
        real = images * 2 - 1
        z, _, _ = self.generator_input(real.shape[0], labels)
        d_real, _ = self.judge(real, labels)
        d_fake, _ = self.judge(self.G(z), labels)
        shown = torch.sigmoid if cfg.loss == "nonsaturating" else torch.as_tensor
        return {"loss": d_loss_fn(d_real, d_fake).item(),
                "d_real": shown(d_real.float()).mean().item()}

    def end_epoch(self) -> dict[str, float]:
        used = super().end_epoch()
        if self.G_ema is not None:
            self.refresh_ema_batchnorm()
        return used

    @torch.no_grad()
    def refresh_ema_batchnorm(self, batches: int = 20, batch_size: int = 128) -> None:
        """Recompute the EMA generator's BatchNorm statistics for its own weights (averaged
        running statistics of G do not belong to averaged weights), with torch's
        ``update_bn`` over seeded latents — the same on every DDP rank."""
        generator = torch.Generator().manual_seed(0)
        inputs = [self.generator_input(batch_size,
                                       self.sample_labels(batch_size, generator, None),
                                       generator)[0] for _ in range(batches)]
        update_bn(inputs, self.G_ema)

    # --- sampling and state --------------------------------------------------------------
    def sampling_generator(self) -> nn.Module:
        """The network that draws samples: G's EMA when kept, else G."""
        return self.G_ema.module if self.G_ema is not None else unwrap(self.G)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None,
               latents: torch.Tensor | None = None) -> torch.Tensor:
        g = self.sampling_generator()
        with eval_mode(g):
            labels = self.sample_labels(num_samples, generator, labels)
            z, _, _ = self.generator_input(num_samples, labels, generator, latents)
            return ((g(z) + 1) / 2).clamp_(0, 1).float().cpu()

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        weights = super().weights()
        if self.G_ema is not None:
            weights["G_ema"] = {k: v.detach().cpu().clone()
                               for k, v in self.G_ema.state_dict().items()}
        return weights

    def load_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        super().load_weights(weights)
        if self.G_ema is not None:
            self.G_ema.load_state_dict(weights["G_ema"])
