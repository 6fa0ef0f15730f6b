"""DCGAN: shapes, sampling, training step and a discriminator that learns."""

from __future__ import annotations

import pytest
import torch

from dgm.models.gan import DCGAN, GANConfig
from dgm.models.registry import build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def tiny_gan(shape=(1, 8, 8), seed=0, **cfg) -> DCGAN:
    config = GANConfig(**{"latent_dim": 8, "width": 4, **cfg})
    return build_model(config, shape, seed=seed).setup()


@pytest.mark.parametrize("shape", SHAPES)
def test_train_step_metric_ranges(shape):
    model = tiny_gan(shape)
    torch.manual_seed(0)
    images = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    metrics = model.train_step(images, None)
    assert 0 < metrics["d_real"] < 1 and 0 < metrics["d_fake"] < 1
    assert metrics["loss_d"] > 0 and metrics["loss_g"] > 0


def test_sample_does_not_depend_on_batch_size():
    """Eval-mode BatchNorm: an image depends on its latent only, not on the batch."""
    model = tiny_gan()
    torch.manual_seed(0)
    model.train_step(torch.rand(8, 1, 8, 8), None)  # non-trivial running statistics
    # randn(4, 8) is a prefix of randn(8, 8) from the same generator state.
    small = model.sample(4, generator=torch.Generator().manual_seed(5))
    large = model.sample(8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(small, large[:4], rtol=0, atol=1e-6)


def test_sample_leaves_mode_and_batchnorm_statistics_alone():
    model = tiny_gan()
    model.train()
    bn = model.G.project[1]
    mean_before = bn.running_mean.clone()
    count_before = bn.num_batches_tracked.clone()
    model.sample(16, generator=torch.Generator().manual_seed(0))
    assert model.G.training and model.D.training
    assert torch.equal(bn.running_mean, mean_before)
    assert torch.equal(bn.num_batches_tracked, count_before)


def test_discriminator_separates_real_from_fake_on_a_fixed_batch(digits_batch):
    model = tiny_gan(latent_dim=8, width=8, lr_d=2e-3, lr_g=2e-4)
    torch.manual_seed(0)
    first = model.train_step(digits_batch, None)
    for _ in range(48):
        model.train_step(digits_batch, None)
    last = model.train_step(digits_batch, None)
    assert abs(first["d_real"] - first["d_fake"]) < 0.3  # no separation at init
    assert last["d_real"] > 0.8 and last["d_fake"] < 0.2
    assert last["loss_d"] < first["loss_d"] / 4


def test_training_changes_both_networks(digits_batch):
    model = tiny_gan()
    before = model.weights()
    before = {n: {k: v.clone() for k, v in w.items()} for n, w in before.items()}
    torch.manual_seed(0)
    model.train_step(digits_batch, None)
    after = model.weights()
    for net in ("G", "D"):
        changed = [k for k in before[net] if not torch.equal(before[net][k], after[net][k])]
        assert changed, net
