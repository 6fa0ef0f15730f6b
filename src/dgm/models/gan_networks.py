"""The GAN's networks, sized from the image shape by :func:`~dgm.models.base.scale_plan`.

``dcgan``: stride-2 (transposed) convolutions with BatchNorm (Radford et al. 2016).
``resnet``: the SNGAN residual blocks (Miyato et al. 2018) with a global sum pool in D,
for images of 32 px and up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from dgm.errors import DgmError
from dgm.models.base import ImageShape, ScalePlan, scale_plan

RESNET_MIN_SIDE = 32


def _upsampling_dcgan(widths: list[int], channels: int) -> list[nn.Module]:
    """Stride-2 transposed convolutions from the base's ``widths[-1]`` channels down to the
    image: BatchNorm and ReLU between them, tanh at the end."""
    layers: list[nn.Module] = []
    for k in range(len(widths) - 1, 0, -1):
        layers += [nn.ConvTranspose2d(widths[k], widths[k - 1], 4, 2, 1, bias=False),
                   nn.BatchNorm2d(widths[k - 1]), nn.ReLU(True)]
    return [*layers, nn.ConvTranspose2d(widths[0], channels, 4, 2, 1), nn.Tanh()]


class UpBlock(nn.Module):
    """SNGAN generator block: BN-ReLU-up-conv3-BN-ReLU-conv3, plus an up-conv1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(True),
            nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


class DownBlock(nn.Module):
    """SNGAN discriminator block: (ReLU-)conv3-ReLU-conv3-pool, plus a conv1 + pool shortcut;
    the ``first`` block sees raw pixels (no leading ReLU, pool before the shortcut's conv)."""

    def __init__(self, cin: int, cout: int, first: bool, wrap: Callable[[nn.Module], nn.Module]):
        super().__init__()
        self.main = nn.Sequential(
            nn.Identity() if first else nn.ReLU(), wrap(nn.Conv2d(cin, cout, 3, 1, 1)),
            nn.ReLU(True), wrap(nn.Conv2d(cout, cout, 3, 1, 1)), nn.AvgPool2d(2))
        conv = wrap(nn.Conv2d(cin, cout, 1))
        self.skip = nn.Sequential(nn.AvgPool2d(2), conv) if first else nn.Sequential(
            conv, nn.AvgPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


def _check_architecture(architecture: str, image_shape: ImageShape) -> ScalePlan:
    plan = scale_plan(image_shape)
    if architecture == "resnet" and min(image_shape[1:]) < RESNET_MIN_SIDE:
        raise DgmError(f"architecture: resnet needs images of at least {RESNET_MIN_SIDE} px, "
                       f"got {image_shape[1]}x{image_shape[2]} (use dcgan)")
    return plan


class Generator(nn.Module):
    """z → linear → (w·2^(n-1), base) → n stride-2 up-sampling blocks → tanh image.

    ``architecture``: ``dcgan`` (transposed convolutions) or ``resnet`` (SNGAN blocks);
    ``n`` and the base come from :func:`scale_plan` of the image shape.
    """

    def __init__(self, latent_dim: int, width: int, image_shape: ImageShape,
                 architecture: str = "dcgan"):
        super().__init__()
        channels = image_shape[0]
        plan = _check_architecture(architecture, image_shape)
        self.base, widths = plan.base, plan.widths(width)
        self.top = widths[-1]
        units = self.top * self.base[0] * self.base[1]
        if architecture == "dcgan":
            self.project = nn.Sequential(nn.Linear(latent_dim, units, bias=False),
                                         nn.BatchNorm1d(units), nn.ReLU(True))
            self.upsample = nn.Sequential(*_upsampling_dcgan(widths, channels))
        else:
            self.project = nn.Sequential(nn.Linear(latent_dim, units))
            steps = [*reversed(widths), widths[0]]
            self.upsample = nn.Sequential(
                *(UpBlock(a, b) for a, b in zip(steps[:-1], steps[1:], strict=True)),
                nn.BatchNorm2d(widths[0]), nn.ReLU(True),
                nn.Conv2d(widths[0], channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], self.top, *self.base)
        return self.upsample(h)


class Discriminator(nn.Module):
    """Stride-2 convolutions (BatchNorm optional, from the second on) with LeakyReLU — or
    SNGAN residual blocks and a global sum pool (``architecture: resnet``) — then a linear
    logit; every layer spectrally normalised when ``sn``. ``num_classes`` adds a class
    projection (⟨embed(y), h⟩) to the logit; ``q_dim`` adds the InfoGAN Q head on the same
    features.

    ``forward`` returns (N,) logits, or (N, 1 + q_dim) — the logit, then Q's outputs.
    """

    def __init__(self, width: int, image_shape: ImageShape, batchnorm: bool = True,
                 sn: bool = False, dropout: float = 0.0, num_classes: int = 0, q_dim: int = 0,
                 architecture: str = "dcgan"):
        super().__init__()
        channels = image_shape[0]
        plan = _check_architecture(architecture, image_shape)
        widths = plan.widths(width)
        wrap = spectral_norm if sn else (lambda layer: layer)
        drop = (lambda: nn.Dropout(dropout)) if dropout else nn.Identity
        layers: list[nn.Module] = []
        if architecture == "dcgan":
            features = widths[-1] * plan.base[0] * plan.base[1]
            for k, (cin, cout) in enumerate(zip([channels, *widths[:-1]], widths, strict=True)):
                layers.append(wrap(nn.Conv2d(cin, cout, 4, 2, 1, bias=not (k and batchnorm))))
                if k:
                    layers.append(nn.BatchNorm2d(cout) if batchnorm else nn.Identity())
                layers += [nn.LeakyReLU(0.2, True), drop()]
            layers.append(nn.Flatten())
        else:  # no BatchNorm: spectral norm (or the gradient penalty) keeps D in check
            features = widths[-1]
            for k, (cin, cout) in enumerate(zip([channels, *widths[:-1]], widths, strict=True)):
                layers += [DownBlock(cin, cout, first=k == 0, wrap=wrap), drop()]
            layers += [nn.ReLU(True), SumPool()]
        self.body = nn.Sequential(*layers)
        self.out = wrap(nn.Linear(features, 1))
        self.embed = None
        if num_classes:  # small initial projection: training starts near unconditional
            embed = nn.Embedding(num_classes, features)
            nn.init.normal_(embed.weight, std=0.02)
            self.embed = wrap(embed)
        self.q = nn.Sequential(nn.Linear(features, 128), nn.LeakyReLU(0.2, True),
                               nn.Linear(128, q_dim)) if q_dim else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h).sum(1)
        if self.q is None:
            return logit
        return torch.cat([logit[:, None], self.q(h)], dim=1)


class SumPool(nn.Module):
    """(N, C, H, W) → (N, C): the sum over positions (SNGAN's global pooling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(2, 3))
