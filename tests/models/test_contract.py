"""The interface every family keeps: sampling, one train step, seeding, image sizes."""

from __future__ import annotations

import math

import pytest
import torch

from dgm.errors import DgmError
from dgm.models.gan import GANConfig
from dgm.models.rbm import RBMConfig
from dgm.models.registry import FAMILIES, build_model
from dgm.models.vae import VAEConfig

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
TINY = {"gan": GANConfig(latent_dim=8, width=4), "vae": VAEConfig(latent_dim=4, width=4),
        "rbm": RBMConfig(hidden=8, gibbs_steps=5)}
METRIC_KEYS = {"gan": {"loss_d", "loss_g", "d_real", "d_fake"}, "vae": {"loss", "recon", "kl"},
               "rbm": {"cd_loss", "recon_bce"}}
CONVOLUTIONAL = ("gan", "vae")


def test_every_family_is_covered():
    assert set(TINY) == set(METRIC_KEYS) == set(FAMILIES)


def tiny(family: str, shape=(1, 8, 8), seed: int = 0):
    return build_model(TINY[family], shape, seed=seed).setup()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_sample_shape_and_range(family, shape):
    x = tiny(family, shape).sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, *shape)
    assert x.device.type == "cpu"
    assert x.dtype == torch.float32
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0
    assert x.std().item() > 0  # not a constant image


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_train_step_returns_finite_floats(family, shape):
    torch.manual_seed(0)
    images = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    metrics = tiny(family, shape).train_step(images, None)
    assert set(metrics) == METRIC_KEYS[family]
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_seeded_sample_is_deterministic(family):
    model = tiny(family)
    a = model.sample(8, generator=torch.Generator().manual_seed(3))
    b = model.sample(8, generator=torch.Generator().manual_seed(3))
    c = model.sample(8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("family", CONVOLUTIONAL)
@pytest.mark.parametrize("shape", [(1, 10, 10), (1, 8, 6), (3, 30, 32)])
def test_size_not_divisible_by_4(family, shape):
    with pytest.raises(DgmError, match="divisible by 4"):
        tiny(family, shape)


@pytest.mark.parametrize("shape", [(1, 10, 10), (3, 5, 7)])
def test_fully_connected_families_take_any_size(shape):
    x = tiny("rbm", shape).sample(3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, *shape)
