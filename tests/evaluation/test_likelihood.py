"""Likelihood estimates: the VAE's IWAE log p(x) and the ``nll_nats`` metric around it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgm.evaluation.likelihood import (
    LikelihoodModel,
    negative_log_likelihood,
    supports_likelihood,
)
from dgm.models.gan import DCGAN, GANConfig
from dgm.models.registry import build_model
from dgm.models.vae import VAE, VAEConfig

SHAPE = (1, 8, 8)


def make_vae(seed: int = 0, shape=SHAPE) -> VAE:
    torch.manual_seed(seed)
    return VAE(VAEConfig(latent_dim=4, width=8), shape)


@torch.no_grad()
def prior_posterior_vae(bias, shape=SHAPE) -> VAE:
    """q(z|x) = N(0, I) = p(z) and p(x|z) = Bernoulli(σ(bias[c])) for every pixel of channel c."""
    vae = make_vae(shape=shape)
    net = vae.net
    net.posterior.weight.zero_()
    net.posterior.bias.zero_()  # mu = 0, logvar = 0
    for layer in (net.project[0], net.decoder[0], net.decoder[2]):
        layer.weight.zero_()
        layer.bias.zero_()
    net.decoder[2].bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return vae


def random_images(n: int, shape=SHAPE, seed: int = 0, binary: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((n, *shape), generator=g)
    return (images > 0.5).float() if binary else images


def bernoulli_log_likelihood(images: torch.Tensor, bias) -> torch.Tensor:
    logits = torch.as_tensor(bias, dtype=torch.float32).view(-1, 1, 1).expand_as(images[0])
    return -F.binary_cross_entropy_with_logits(
        logits.expand_as(images), images, reduction="none").flatten(1).sum(1)


# --- closed form ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_samples", [1, 5, 64])
@pytest.mark.parametrize("binary", [True, False])
def test_log_likelihood_when_posterior_is_prior_and_decoder_constant(num_samples, binary):
    # Every importance weight is p(x|z) p(z) / q(z|x) = p(x): the estimate is exact for any K.
    bias = 0.7
    vae = prior_posterior_vae([bias])
    images = random_images(6, binary=binary)
    expected = bernoulli_log_likelihood(images, [bias])
    value = vae.log_likelihood(images, num_samples, torch.Generator().manual_seed(3))
    assert value.shape == (6,)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-4)
    # By hand: Σ x log σ(b) + (1 − x) log(1 − σ(b)).
    p = 1 / (1 + math.exp(-bias))
    by_hand = (images * math.log(p) + (1 - images) * math.log(1 - p)).flatten(1).sum(1)
    torch.testing.assert_close(value, by_hand, rtol=1e-5, atol=1e-4)


def test_closed_form_with_several_channels():
    shape, bias = (3, 4, 4), [-1.0, 0.0, 2.5]
    vae = prior_posterior_vae(bias, shape)
    images = random_images(5, shape)
    expected = bernoulli_log_likelihood(images, bias)
    torch.testing.assert_close(vae.log_likelihood(images, 8), expected, rtol=1e-5, atol=1e-4)
    # The all-zero image under b = 0 on a 1×8×8 image: 64 fair coins, −64 ln 2.
    vae = prior_posterior_vae([0.0])
    value = vae.log_likelihood(torch.zeros(1, *SHAPE), 4)
    assert value.item() == pytest.approx(-64 * math.log(2), rel=1e-6)


def test_closed_form_matches_negative_elbo():
    # With q = prior the KL term is 0 and the reconstruction term is the whole −log p(x).
    vae = prior_posterior_vae([-0.3])
    images = random_images(4)
    recon, kl = vae.negative_elbo(images)
    torch.testing.assert_close(kl, torch.zeros(4))
    torch.testing.assert_close(vae.log_likelihood(images, 3), -recon, rtol=1e-5, atol=1e-4)


# --- a random VAE --------------------------------------------------------------------------
def test_random_vae_log_likelihood_is_finite_and_seeded():
    vae = make_vae(1)
    images = random_images(10, seed=1)
    a = vae.log_likelihood(images, 16, torch.Generator().manual_seed(0))
    b = vae.log_likelihood(images, 16, torch.Generator().manual_seed(0))
    c = vae.log_likelihood(images, 16, torch.Generator().manual_seed(1))
    assert a.shape == (10,) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Roughly the 64 fair-coin pixels of an untrained decoder, −64 ln 2 ≈ −44.4.
    assert (a < 0).all() and a.mean().item() == pytest.approx(-64 * math.log(2), rel=0.1)


def test_iwae_bound_tightens_with_more_samples():
    vae = make_vae(2)
    images = random_images(32, seed=2)
    k1 = vae.log_likelihood(images, 1, torch.Generator().manual_seed(0)).mean().item()
    k64 = vae.log_likelihood(images, 64, torch.Generator().manual_seed(0)).mean().item()
    assert k64 >= k1 - 0.05


@torch.no_grad()
def test_iwae_bound_tightens_strictly_when_the_decoder_depends_on_z():
    # Stronger decoder weights: p(x|z) varies a lot with z and the prior-like q(z|x) is a poor
    # proposal, so the K = 1 bound is far below the K = 64 one.
    vae = make_vae(3)
    for layer in (vae.net.project[0], vae.net.decoder[0], vae.net.decoder[2]):
        layer.weight.mul_(4)
    images = random_images(32, seed=3)
    means = [vae.log_likelihood(images, k, torch.Generator().manual_seed(0)).mean().item()
             for k in (1, 8, 64)]
    assert means[0] + 5 < means[1] < means[2]


def test_single_sample_estimate_is_the_elbo_in_expectation():
    vae = make_vae(4)
    images = random_images(16, seed=4)
    seeds = range(12)
    iwae1 = np.mean([vae.log_likelihood(images, 1, torch.Generator().manual_seed(s))
                     .mean().item() for s in seeds])
    elbo = []
    for s in seeds:
        torch.manual_seed(100 + s)
        with torch.no_grad():
            recon, kl = vae.negative_elbo(images)
        elbo.append(-(recon + kl).mean().item())
    assert iwae1 == pytest.approx(np.mean(elbo), abs=0.15)


# --- negative_log_likelihood ---------------------------------------------------------------
def test_negative_log_likelihood_is_minus_mean_log_likelihood():
    vae = make_vae(5)
    images = random_images(12, seed=5)
    result = negative_log_likelihood(vae, images, num_samples=4, seed=7, batch_size=100)
    assert set(result) == {"nll_nats", "nll_nats_stderr"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.values())
    values = vae.log_likelihood(images, 4, torch.Generator().manual_seed(7)).double().numpy()
    assert result["nll_nats"] == pytest.approx(-values.mean(), rel=1e-12)
    expected_stderr = values.std(ddof=1) / math.sqrt(len(values))
    assert result["nll_nats_stderr"] == pytest.approx(expected_stderr, rel=1e-9)
    assert result["nll_nats_stderr"] > 0


def test_negative_log_likelihood_shares_one_generator_across_batches():
    vae = make_vae(6)
    images = random_images(10, seed=6)
    result = negative_log_likelihood(vae, images, num_samples=3, seed=2, batch_size=4)
    g = torch.Generator().manual_seed(2)
    values = torch.cat([vae.log_likelihood(images[i:i + 4], 3, g) for i in (0, 4, 8)])
    assert result["nll_nats"] == pytest.approx(-values.double().mean().item(), rel=1e-12)
    assert negative_log_likelihood(vae, images, 3, seed=2, batch_size=4) == result


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_negative_log_likelihood_of_the_closed_form_model(batch_size):
    # The estimate does not depend on the draws here, so the batch size cannot change it.
    bias = 0.4
    vae = prior_posterior_vae([bias])
    images = random_images(7, binary=False, seed=8)
    expected = -bernoulli_log_likelihood(images, [bias]).double().numpy()
    result = negative_log_likelihood(vae, images, num_samples=2, batch_size=batch_size)
    assert result["nll_nats"] == pytest.approx(expected.mean(), rel=1e-5)
    assert result["nll_nats_stderr"] == pytest.approx(
        expected.std(ddof=1) / math.sqrt(7), rel=1e-3)


def test_negative_log_likelihood_of_one_image_has_zero_stderr():
    vae = prior_posterior_vae([0.0])
    result = negative_log_likelihood(vae, torch.zeros(1, *SHAPE), num_samples=2)
    assert result == {"nll_nats": pytest.approx(64 * math.log(2), rel=1e-6),
                      "nll_nats_stderr": 0.0}


# --- which models have a likelihood --------------------------------------------------------
def test_supports_likelihood():
    assert supports_likelihood(make_vae())
    assert isinstance(make_vae(), LikelihoodModel)
    gan = build_model(GANConfig(latent_dim=8, width=8), SHAPE, seed=0)
    assert isinstance(gan, DCGAN)
    assert not supports_likelihood(gan)
    assert not supports_likelihood(object())

    class Custom:
        def log_likelihood(self, images, num_samples, generator=None):
            return torch.zeros(len(images))

    assert supports_likelihood(Custom())
