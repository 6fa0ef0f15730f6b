"""The dropout RBM (Srivastava et al. 2014): hidden-unit masks, the masked free energy, CD
updates of thinned RBMs, and validation of the full RBM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgm.models.rbm import RBM, BernoulliRBM, RBMConfig, bernoulli

HIDDEN = 6
DROPPED = [0, 3]


def random_rbm(visible: int, hidden: int, seed: int = 0) -> BernoulliRBM:
    g = torch.Generator().manual_seed(seed)
    rbm = BernoulliRBM(visible, hidden).double()
    with torch.no_grad():
        rbm.W.copy_(torch.randn(visible, hidden, generator=g, dtype=torch.float64))
        rbm.b.copy_(torch.randn(visible, generator=g, dtype=torch.float64))
        rbm.c.copy_(torch.randn(hidden, generator=g, dtype=torch.float64))
    return rbm.requires_grad_(False)


def binary(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, cols, generator=g) < 0.5).double()


def sgd_rbm(dropout: float = 0.5, persistent: bool = False) -> RBM:
    """Plain SGD (no momentum, no weight decay): a parameter moves only by its gradient."""
    torch.manual_seed(0)
    config = RBMConfig(hidden=HIDDEN, lr=0.5, momentum=0.0, weight_decay=0.0, dropout=dropout,
                       persistent=persistent, persistent_chains=16)
    return RBM(config, (1, 8, 8)).setup()


def params_of(model: RBM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.named_parameters()}


# --- masks ---------------------------------------------------------------------------------
def test_no_dropout_no_mask():
    model = RBM(RBMConfig(hidden=HIDDEN), (1, 8, 8))
    assert model.config.dropout == 0.0
    assert model.dropout_mask(10) is None


@pytest.mark.parametrize("dropout", [0.5, 0.2])
def test_mask_keep_rate(dropout):
    torch.manual_seed(0)
    model = RBM(RBMConfig(hidden=100, dropout=dropout), (1, 8, 8))
    mask = model.dropout_mask(1000)
    assert mask.shape == (1000, 100)
    assert mask.dtype == model.net.W.dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # 100 000 Bernoulli draws: the keep rate's standard error is below 0.0016
    assert mask.mean().item() == pytest.approx(1 - dropout, abs=0.01)
    assert mask.mean(0).std().item() < 0.1  # every unit is dropped at about the same rate
    assert not torch.equal(mask[:500], mask[500:])  # rows are drawn independently


# --- the masked free energy ----------------------------------------------------------------
def test_all_ones_mask_is_no_mask():
    rbm = random_rbm(7, 5)
    v = binary(9, 7, seed=1)
    ones = torch.ones(9, 5, dtype=torch.float64)
    assert torch.equal(rbm(v, ones), rbm(v))
    assert torch.equal(rbm.hidden_probs(v, mask=ones), rbm.hidden_probs(v))


def test_masked_free_energy_by_hand():
    rbm = random_rbm(7, 5)
    v = binary(4, 7, seed=2)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 1]],
                        dtype=torch.float64)
    free = rbm(v, mask)
    for i in range(4):
        kept = [j for j in range(5) if mask[i, j]]
        by_hand = -(rbm.b @ v[i]) - sum(
            F.softplus(rbm.c[j] + v[i] @ rbm.W[:, j]) for j in kept)
        assert free[i].item() == pytest.approx(by_hand.item(), rel=1e-12, abs=1e-12)
    assert free[1].item() == pytest.approx(-(rbm.b @ v[1]).item(), rel=1e-12)  # all dropped
    assert torch.all(free >= rbm(v) - 1e-12)  # dropping units removes −softplus terms
    probs = rbm.hidden_probs(v, mask=mask)
    assert torch.equal(probs == 0, mask == 0)  # a dropped unit is never on


def test_gibbs_with_a_mask_never_turns_dropped_units_on():
    rbm = random_rbm(7, 5)
    mask = torch.ones(200, 5, dtype=torch.float64)
    mask[:, DROPPED] = 0
    start = binary(200, 7, seed=3)
    masked, _ = rbm.gibbs(start, 3, torch.Generator().manual_seed(4), mask=mask)
    with torch.no_grad():
        rbm.W[:, DROPPED] = 0
        rbm.c[DROPPED] = -1e9  # the thinned RBM: those units are off for sure
    reference, _ = rbm.gibbs(start, 3, torch.Generator().manual_seed(4))
    assert torch.equal(masked, reference)


# --- training ------------------------------------------------------------------------------
@pytest.mark.parametrize("persistent", [False, True])
def test_train_step_with_dropout_learns(digits_batch, persistent):
    model = sgd_rbm(dropout=0.5, persistent=persistent)
    before = params_of(model)
    metrics = model.train_step(digits_batch, None)
    assert set(metrics) == {"cd_loss", "recon_bce"}
    assert all(torch.isfinite(torch.tensor(list(metrics.values()))))
    after = params_of(model)
    assert not torch.equal(before["W"], after["W"])
    assert model.net.pixel_count.item() == 16


def fixed_mask(rows: int) -> torch.Tensor:
    mask = torch.ones(rows, HIDDEN)
    mask[:, DROPPED] = 0
    return mask


@pytest.mark.parametrize("persistent", [False, True])
def test_units_dropped_in_every_row_are_not_updated(digits_batch, monkeypatch, persistent):
    model = sgd_rbm(persistent=persistent)
    requested = []

    def mask(rows):
        requested.append(rows)
        return fixed_mask(rows)

    monkeypatch.setattr(model, "dropout_mask", mask)
    before = params_of(model)
    model.train_step(digits_batch, None)
    after = params_of(model)
    # a row per data case (CD's chains reuse them) and, for PCD, one per persistent chain
    assert requested == ([16, 16] if persistent else [16])
    kept = [j for j in range(HIDDEN) if j not in DROPPED]
    assert torch.equal(after["W"][:, DROPPED], before["W"][:, DROPPED])
    assert torch.equal(after["c"][DROPPED], before["c"][DROPPED])
    moved = (after["W"][:, kept] - before["W"][:, kept]).abs().amax(0)
    assert torch.all(moved > 0)  # every kept unit learns
    assert not torch.equal(after["c"][kept], before["c"][kept])
    assert not torch.equal(after["b"], before["b"])


def test_cd_scores_each_chain_with_the_mask_it_was_sampled_with(digits_batch, monkeypatch):
    """CD: the chain of training case i runs in case i's thinned RBM, so its negative-phase
    free energy must use case i's mask; a unit dropped for every case then gets no update,
    whatever the other rows of the drawn mask hold."""
    model = sgd_rbm(persistent=False)

    def mask(rows):
        out = torch.ones(rows, HIDDEN)
        out[:16, DROPPED] = 0  # dropped for every training case; the rest is not used by CD
        return out

    monkeypatch.setattr(model, "dropout_mask", mask)
    before = params_of(model)
    model.train_step(digits_batch, None)
    after = params_of(model)
    assert torch.equal(after["W"][:, DROPPED], before["W"][:, DROPPED])
    assert torch.equal(after["c"][DROPPED], before["c"][DROPPED])


def test_no_dropout_draws_no_mask(digits_batch, monkeypatch):
    model = sgd_rbm(dropout=0.0)
    seen = []
    gibbs = model.net.gibbs

    def spy(v, steps, generator=None, mask=None):
        seen.append(mask)
        return gibbs(v, steps, generator, mask=mask)

    monkeypatch.setattr(model.net, "gibbs", spy)
    model.train_step(digits_batch, None)
    assert seen == [None]


# --- validation ----------------------------------------------------------------------------
def trained(dropout: float) -> RBM:
    model = sgd_rbm(dropout=dropout)
    with torch.no_grad():
        model.net.W.copy_(torch.randn(64, HIDDEN, generator=torch.Generator().manual_seed(5)))
        model.net.c.fill_(0.3)
        model.net.b.fill_(-0.2)
    return model


def test_validation_step_by_hand(digits_batch):
    model = trained(dropout=0.5)
    state = {k: v.clone() for k, v in model.net.state_dict().items()}
    torch.manual_seed(7)
    metrics = model.validation_step(digits_batch, None)
    assert set(metrics) == {"loss", "free_energy"}

    torch.manual_seed(7)  # the same stochastic binarization
    net = model.net
    v = bernoulli(digits_batch.flatten(1))
    with torch.no_grad():
        recon = torch.sigmoid(torch.sigmoid(v @ net.W + net.c) @ net.W.t() + net.b)
        bce = -(v * recon.log() + (1 - v) * (1 - recon).log()).sum(1).mean()
        free = (-(v @ net.b) - F.softplus(v @ net.W + net.c).sum(1)).mean()
    assert metrics["loss"] == pytest.approx(bce.item(), rel=1e-5)
    assert metrics["free_energy"] == pytest.approx(free.item(), rel=1e-5)
    assert metrics["loss"] > 0
    # no update, no running statistics, no autograd
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.net.parameters())


def test_validation_scores_the_full_rbm_whatever_the_dropout(digits_batch):
    """Dropout thins the RBM for updates only: validation of the same weights agrees."""
    results = []
    for dropout in (0.0, 0.5):
        model = trained(dropout)
        torch.manual_seed(11)
        results.append(model.validation_step(digits_batch, None))
    assert results[0] == results[1]


def test_validation_through_the_training_loop(digits_dir):
    from torch.utils.data import DataLoader

    from dgm.data.loading import load_split_tensors
    from dgm.training.loop import train_epochs

    train = load_split_tensors(digits_dir, "train")
    val = load_split_tensors(digits_dir, "val")
    model = sgd_rbm(dropout=0.5)
    history = train_epochs(model, DataLoader(train, batch_size=64), epochs=2, log=None,
                           val_loader=DataLoader(val, batch_size=64))
    assert {"cd_loss", "recon_bce", "val_loss", "val_free_energy", "lr_net"} <= set(history[0])
    assert all(row["val_loss"] > 0 for row in history)
    assert history[1]["val_loss"] < history[0]["val_loss"]  # it learns on held-out digits
