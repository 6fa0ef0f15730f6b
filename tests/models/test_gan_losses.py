"""GAN losses by name, the WGAN-GP gradient penalty in closed form, spectral norm, n_critic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgm.models.gan import DCGAN, LOSSES, GANConfig, gradient_penalty

LOSS_NAMES = ("nonsaturating", "lsgan", "wgan-gp", "hinge")


def test_every_configurable_loss_is_registered():
    assert set(LOSSES) == set(LOSS_NAMES)
    assert set(GANConfig.model_fields["loss"].annotation.__args__) == set(LOSS_NAMES)


@pytest.mark.parametrize(("name", "d_value", "g_value"), [
    ("nonsaturating", 2 * math.log(2), math.log(2)),  # logits 0: softplus(0) = log 2
    ("lsgan", 0.5, 0.5),
    ("wgan-gp", 0.0, 0.0),
    ("hinge", 2.0, 0.0),
])
def test_losses_at_zero_outputs(name, d_value, g_value):
    zeros = torch.zeros(7)
    d_loss, g_loss = LOSSES[name]
    assert d_loss(zeros, zeros).item() == pytest.approx(d_value)
    assert g_loss(zeros).item() == pytest.approx(g_value)


def test_losses_at_known_outputs():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 3.0])
    assert LOSSES["hinge"][0](real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 4) / 2)
    assert LOSSES["lsgan"][0](real, fake).item() == pytest.approx(
        0.5 * (1 + 0.25) / 2 + 0.5 * (1 + 9) / 2)
    assert LOSSES["wgan-gp"][0](real, fake).item() == pytest.approx(1.0 - 1.25)
    assert LOSSES["wgan-gp"][1](fake).item() == pytest.approx(-1.0)


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    w = critic[1].weight.detach().flatten()
    real, fake = torch.randn(5, 1, 3, 4), torch.randn(5, 1, 3, 4)
    expected = (w.norm() - 1) ** 2  # ∇ₓ(w·x + b) = w everywhere
    assert gradient_penalty(lambda x: critic(x).squeeze(1), real, fake).item() == \
        pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        critic[1].weight.div_(w.norm())  # unit-norm gradient: no penalty
    assert gradient_penalty(lambda x: critic(x).squeeze(1), real, fake).item() == \
        pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_of_a_quadratic_critic_at_fixed_alpha():
    real, fake = torch.full((2, 3), 1.0), torch.zeros(2, 3)
    alpha = torch.tensor([[0.5], [1.0]])
    # D(x) = ‖x‖² / 2 → ∇ = x̂ = α·1: norms √3/2 and √3
    value = gradient_penalty(lambda x: 0.5 * (x ** 2).sum(1), real, fake, alpha).item()
    assert value == pytest.approx(((math.sqrt(3) / 2 - 1) ** 2 + (math.sqrt(3) - 1) ** 2) / 2)


def test_penalty_gradient_reaches_the_critic_parameters():
    critic = nn.Linear(4, 1)
    penalty = gradient_penalty(lambda x: critic(x).squeeze(1), torch.randn(3, 4),
                               torch.randn(3, 4))
    penalty.backward()
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0


def d_layers(model: DCGAN) -> set[type]:
    return {type(m) for m in model.D.modules()}


def test_discriminator_layers_follow_the_loss():
    shape = (1, 8, 8)
    assert nn.BatchNorm2d in d_layers(DCGAN(GANConfig(width=4), shape))
    assert nn.BatchNorm2d not in d_layers(DCGAN(GANConfig(width=4, loss="wgan-gp"), shape))
    hinge = DCGAN(GANConfig(width=4, loss="hinge"), shape)
    assert nn.BatchNorm2d not in d_layers(hinge)
    assert torch.nn.utils.parametrize.is_parametrized(hinge.D.body[0])
    plain = DCGAN(GANConfig(width=4, loss="hinge", spectral_norm=False), shape)
    assert not torch.nn.utils.parametrize.is_parametrized(plain.D.body[0])
    assert GANConfig(loss="lsgan", spectral_norm=True).use_spectral_norm


def test_spectral_norm_keeps_the_top_singular_value_at_one(digits_batch):
    torch.manual_seed(0)
    model = DCGAN(GANConfig(width=4, latent_dim=8, loss="hinge"), (1, 8, 8)).setup()
    for _ in range(30):
        model.train_step(digits_batch, None)
    weight = model.D.out.weight  # the parametrised (normalised) weight
    assert torch.linalg.matrix_norm(weight.detach(), ord=2).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_train_step_of_each_loss(name, digits_batch):
    torch.manual_seed(0)
    model = DCGAN(GANConfig(width=4, latent_dim=8, loss=name), (1, 8, 8)).setup()
    metrics = model.train_step(digits_batch, None)
    expected = {"loss_d", "loss_g", "d_real", "d_fake"}
    assert set(metrics) == (expected | {"gradient_penalty"} if name == "wgan-gp" else expected)
    assert all(math.isfinite(v) for v in metrics.values())


def test_n_critic_steps_the_discriminator_n_times(digits_batch):
    torch.manual_seed(0)
    model = DCGAN(GANConfig(width=4, latent_dim=8, loss="wgan-gp", n_critic=3),
                  (1, 8, 8)).setup()
    model.train_step(digits_batch, None)
    steps = {name: next(iter(opt.state.values()))["step"].item()
             for name, opt in model.optimizers.items()}
    assert steps == {"D": 3, "G": 1}


def test_ttur_learning_rates():
    model = DCGAN(GANConfig(width=4, lr_g=1e-4, lr_d=4e-4), (1, 8, 8)).setup()
    assert model.optimizers["G"].param_groups[0]["lr"] == 1e-4
    assert model.optimizers["D"].param_groups[0]["lr"] == 4e-4


def test_discriminator_learns_to_separate_real_from_a_frozen_generator(digits_batch):
    """Each loss's D objective falls when only D trains (the losses are the right sign)."""
    for name in LOSS_NAMES:
        torch.manual_seed(0)
        model = DCGAN(GANConfig(width=8, latent_dim=8, loss=name, lr_d=1e-3), (1, 8, 8)).setup()
        d_loss = LOSSES[name][0]
        real = digits_batch * 2 - 1
        with torch.no_grad():
            fake = model.G(torch.randn(16, 8))
        first = d_loss(model.D(real), model.D(fake)).item()
        for _ in range(60):
            loss = d_loss(model.D(real), model.D(fake))
            model.optimizers["D"].zero_grad()
            loss.backward()
            model.optimizers["D"].step()
        assert d_loss(model.D(real), model.D(fake)).item() < first - 0.5, name
