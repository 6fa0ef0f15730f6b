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


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_has_the_gradient_guards(family):
    config = TINY[family]
    assert config.grad_clip is None and config.max_grad_norm == 1e6
    tuned = type(config).model_validate({**config.model_dump(), "grad_clip": 0.5})
    assert tuned.grad_clip == 0.5


def sgd_rbm(**guards):
    from dgm.models.rbm import RBM

    config = RBMConfig(hidden=8, lr=0.1, momentum=0.0, weight_decay=0.0, **guards)
    torch.manual_seed(0)
    return RBM(config, (1, 4, 4)).setup()


def parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_gradient_clipping_bounds_the_update():
    model = sgd_rbm(grad_clip=1e-3)
    before = parameters(model)
    loss = (model.net.W ** 2).sum() * 1e3 + model.net.b.sum() + model.net.c.sum()
    norm = model.optimize("net", loss)
    assert norm > 1e-3  # the norm before clipping is returned
    step = (parameters(model) - before).norm().item()
    assert step == pytest.approx(0.1 * 1e-3, rel=1e-3)  # lr × clipped norm (plain SGD)


def test_an_exploding_gradient_stops_before_the_step():
    from dgm.errors import TrainingDiverged

    model = sgd_rbm(max_grad_norm=1.0)
    before = parameters(model)
    with pytest.raises(TrainingDiverged, match=r"gradient norm of net became [0-9.e+]+ "
                                               r"\(max_grad_norm 1\)"):
        model.optimize("net", model.net.b.sum() * 100)
    assert torch.equal(parameters(model), before)
    with pytest.raises(TrainingDiverged, match="became nan"):
        model.optimize("net", model.net.b.sum() * float("nan"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_validation_step_reports_a_finite_loss_without_updating(family):
    from dgm.models.base import eval_mode

    model = tiny(family)
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with eval_mode(model):
        metrics = model.validation_step(images, None)
    assert "loss" in metrics and all(math.isfinite(v) for v in metrics.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_takes_labels_only_when_conditional(family):
    model = tiny(family)
    assert not model.conditional and model.num_classes is None
    with pytest.raises(DgmError, match="not conditional"):
        model.sample(2, torch.Generator().manual_seed(0), labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_end_epoch_reports_each_optimizers_learning_rate(family):
    lrs = tiny(family).end_epoch()
    assert set(lrs) == {"lr_G", "lr_D"} if family == "gan" else set(lrs) == {"lr_net"}
    assert all(v > 0 for v in lrs.values())
