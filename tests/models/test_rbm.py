"""The RBM against what can be computed exactly: log Z by enumeration, AIS, the CD gradient."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dgm.evaluation.likelihood import negative_log_likelihood, supports_likelihood
from dgm.models.rbm import (
    RBM,
    BernoulliRBM,
    RBMConfig,
    ais_log_partition,
    base_rate_bias,
    exact_log_partition,
)


def random_rbm(visible: int, hidden: int, scale: float, seed: int = 0) -> BernoulliRBM:
    g = torch.Generator().manual_seed(seed)
    rbm = BernoulliRBM(visible, hidden).double()
    with torch.no_grad():
        rbm.W.copy_(torch.randn(visible, hidden, generator=g, dtype=torch.float64) * scale)
        rbm.b.copy_(torch.randn(visible, generator=g, dtype=torch.float64) * 0.5)
        rbm.c.copy_(torch.randn(hidden, generator=g, dtype=torch.float64) * 0.5)
    return rbm


def all_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def test_exact_log_partition_matches_the_joint_enumeration():
    rbm = random_rbm(5, 3, scale=1.0)
    v, h = all_states(5), all_states(3)
    energy = -(v @ rbm.b)[:, None] - (h @ rbm.c)[None, :] - v @ rbm.W @ h.t()
    brute = torch.logsumexp((-energy).flatten(), 0).item()
    assert exact_log_partition(rbm) == pytest.approx(brute, abs=1e-9)


def test_free_energy_normalises_with_log_z():
    rbm = random_rbm(6, 4, scale=1.0, seed=1)
    log_p = -rbm(all_states(6)) - exact_log_partition(rbm)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("hidden", [4, 16])
def test_ais_matches_the_exact_log_partition(hidden):
    rbm = random_rbm(24, hidden, scale=0.3, seed=hidden)
    base = torch.randn(24, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.3
    estimate, spread = ais_log_partition(rbm, base, chains=200, betas=2000,
                                         generator=torch.Generator().manual_seed(0))
    exact = exact_log_partition(rbm)
    assert estimate == pytest.approx(exact, abs=0.1)
    assert 0 < spread < 0.5


def exact_gradient(rbm: BernoulliRBM, data: torch.Tensor) -> torch.Tensor:
    """∂/∂W of the mean negative log-likelihood, with log Z by visible enumeration."""
    rbm.zero_grad()
    log_z = torch.logsumexp(-rbm(all_states(data.shape[1])), 0)
    (rbm(data).mean() + log_z).backward()
    return rbm.W.grad.clone()


def cd_gradient(rbm: BernoulliRBM, data: torch.Tensor, k: int, repeats: int = 4000):
    """The CD-k update direction, averaged over many chains per data point."""
    start = data.repeat(repeats, 1)
    v_model, _ = rbm.gibbs(start, k, torch.Generator().manual_seed(k))
    rbm.zero_grad()
    (rbm(data).mean() - rbm(v_model.detach()).mean()).backward()
    return rbm.W.grad.clone()


def test_cd_gradient_points_like_the_exact_gradient_and_improves_with_k():
    rbm = random_rbm(6, 4, scale=5.0, seed=3)  # strong couplings: slow mixing, CD-1 biased
    data = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0]],
                        dtype=torch.float64)
    exact = exact_gradient(rbm, data).flatten()
    cosine = {k: torch.nn.functional.cosine_similarity(
        cd_gradient(rbm, data, k).flatten(), exact, dim=0).item() for k in (1, 5, 50)}
    assert 0 < cosine[1] < 0.8  # measured 0.70, 0.94, 0.9995
    assert cosine[1] < cosine[5] < cosine[50]
    assert cosine[50] > 0.99


@pytest.mark.parametrize("persistent", [False, True])
def test_training_overfits_a_tiny_batch(digits_batch, persistent):
    torch.manual_seed(0)
    model = RBM(RBMConfig(hidden=32, lr=0.1, persistent=persistent, persistent_chains=16),
                (1, 8, 8)).setup()
    before = model.train_step(digits_batch, None)["recon_bce"]
    for _ in range(300):
        after = model.train_step(digits_batch, None)["recon_bce"]
    assert after < 0.6 * before
    net = model.net
    assert net.chains.shape == ((16, 64) if persistent else (0, 64))
    assert net.pixel_count.item() == 301 * 16


def test_weights_round_trip_with_buffers():
    config = RBMConfig(hidden=8, persistent=True, persistent_chains=4)
    model = RBM(config, (1, 8, 8)).setup()
    model.train_step(torch.rand(4, 1, 8, 8), None)
    fresh = RBM(config, (1, 8, 8))
    fresh.load_weights(model.weights())
    assert torch.equal(fresh.net.chains, model.net.chains)
    assert torch.equal(fresh.net.W, model.net.W)


def test_log_likelihood_through_the_likelihood_interface():
    torch.manual_seed(0)
    model = RBM(RBMConfig(hidden=10, ais_betas=2000), (1, 4, 4))
    with torch.no_grad():
        model.net.W.mul_(30)  # some structure: weights of scale 0.3
    images = torch.rand(50, 1, 4, 4)
    model.net.pixel_sum += images.flatten(1).sum(0)
    model.net.pixel_count += 50
    images = (images > 0.5).float()  # binary images: stochastic binarization keeps them
    assert supports_likelihood(model)
    log_p = model.log_likelihood(images, 100, torch.Generator().manual_seed(0))
    exact = -model.net(images.flatten(1)) - exact_log_partition(model.net)
    assert torch.allclose(log_p, exact, atol=0.1)
    nll = negative_log_likelihood(model, images, 100)
    assert nll["nll_nats"] == pytest.approx(-exact.mean().item(), abs=0.1)


def test_log_likelihood_binarizes_stochastically_by_seed():
    model = RBM(RBMConfig(hidden=4, ais_betas=50), (1, 4, 4))
    grey = torch.full((20, 1, 4, 4), 0.5)
    a = model.log_likelihood(grey, 10, torch.Generator().manual_seed(1))
    b = model.log_likelihood(grey, 10, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.unique().numel() > 1  # different binary images


def test_base_rate_bias_is_the_logit_of_smoothed_means():
    bias = base_rate_bias(torch.tensor([0.0, 5.0, 10.0]), 10.0, smoothing=0.0)
    assert bias[1].item() == pytest.approx(0.0)
    assert bias[0].item() == -math.inf and bias[2].item() == math.inf
    smoothed = base_rate_bias(torch.tensor([0.0]), 10.0, smoothing=2.0)
    assert smoothed.item() == pytest.approx(math.log(1 / 11))
