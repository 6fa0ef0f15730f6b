"""The convolutional VAE: shapes, sampling, its loss terms and that it learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dgm.models.registry import build_model
from dgm.models.vae import VAE, VAEConfig, gaussian_kl

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def tiny_vae(shape=(1, 8, 8), seed=0, **cfg) -> VAE:
    config = VAEConfig(**{"latent_dim": 4, "width": 4, **cfg})
    return build_model(config, shape, seed=seed).setup()


@pytest.mark.parametrize("shape", SHAPES)
def test_train_step_metric_ranges(shape):
    model = tiny_vae(shape)
    images = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    metrics = model.train_step(images, None)
    # Bernoulli NLL summed over pixels: positive and at most ~ln 2 per pixel at init (+ slack).
    assert 0 < metrics["recon"] < 2 * math.log(2) * math.prod(shape)
    assert metrics["kl"] >= 0


def test_loss_is_recon_plus_beta_kl(digits_batch):
    model = tiny_vae(beta=0.25)
    torch.manual_seed(0)
    m = model.train_step(digits_batch, None)
    assert m["loss"] == pytest.approx(m["recon"] + 0.25 * m["kl"], rel=1e-5)


def test_negative_elbo_terms_per_example(digits_batch):
    model = tiny_vae()
    logits, _, mu, logvar, log_scale = model.net(digits_batch)
    recon = -model.log_px(logits, digits_batch, log_scale)[0]
    kl = gaussian_kl(mu, logvar)
    assert recon.shape == (16,) and kl.shape == (16,)
    # The reconstruction term can not beat the entropy of the (fractional) pixel values.
    floor = F.binary_cross_entropy(digits_batch, digits_batch, reduction="none").flatten(1).sum(1)
    assert torch.all(recon >= floor - 1e-4)
    assert torch.all(kl >= 0)


def test_gaussian_kl_closed_form_values():
    zero = torch.zeros(2, 3)
    assert torch.equal(gaussian_kl(zero, zero), torch.zeros(2))
    # mu = 1, var = 1: 0.5 per dimension.
    assert gaussian_kl(torch.ones(1, 3), torch.zeros(1, 3)).item() == pytest.approx(1.5)
    # mu = 0, var = e: 0.5 * (e - 1 - 1) per dimension.
    assert gaussian_kl(torch.zeros(1, 1), torch.ones(1, 1)).item() == pytest.approx(
        0.5 * (math.e - 2))


def test_gaussian_kl_matches_monte_carlo():
    mu = torch.tensor([[0.5, -1.0], [2.0, 0.0], [0.0, 0.3]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, -1.0], [0.7, 0.2], [-2.0, 1.0]], dtype=torch.float64)
    std = torch.exp(0.5 * logvar)
    gen = torch.Generator().manual_seed(0)
    n = 400_000
    eps = torch.randn(n, *mu.shape, generator=gen, dtype=torch.float64)
    z = mu + std * eps
    # log q(z) - log p(z), summed over latent dimensions (the 2π terms cancel).
    log_q = (-0.5 * eps.pow(2) - 0.5 * logvar).sum(-1)
    log_p = (-0.5 * z.pow(2)).sum(-1)
    mc = (log_q - log_p).mean(0)
    exact = gaussian_kl(mu, logvar)
    assert exact.shape == (3,)
    torch.testing.assert_close(mc, exact, rtol=0.02, atol=0.01)


def test_overfits_a_fixed_batch(digits_batch):
    """The loss above its floor (pixel entropy) falls at least 2× in 150 steps."""
    model = tiny_vae(latent_dim=4, width=8, lr=1e-2)
    torch.manual_seed(0)
    floor = F.binary_cross_entropy(digits_batch, digits_batch, reduction="none")
    floor = floor.flatten(1).sum(1).mean().item()
    losses = [model.train_step(digits_batch, None)["loss"] for _ in range(150)]
    start = losses[0] - floor
    end = sum(losses[-10:]) / 10 - floor
    assert start > 20  # ~29 nats above the floor at init: there is something to learn
    assert start / end >= 2.0, (losses[0], losses[-10:], floor)


def test_analytic_kl_matches_a_monte_carlo_estimate():
    from torch.distributions import Normal

    from dgm.models.vae import gaussian_kl

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, generator=g)
    logvar = torch.randn(4, 3, generator=g) * 0.5
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(gaussian_kl(mu, logvar), monte_carlo, atol=0.02, rtol=0.01)
