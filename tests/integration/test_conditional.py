"""Conditional models produce the requested class: the evaluator's accuracy on their samples
(small runs on digits through the shared training loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dgm.data.loading import load_split_tensors, to_float_tensor
from dgm.evaluation.classifier import accuracy, extract, load_classifier
from dgm.models.gan import DCGAN, GANConfig
from dgm.models.generator import balanced_labels, sample_uint8
from dgm.models.vae import VAE, VAEConfig
from dgm.training.loop import train_epochs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits_classifier(digits_dir, digits_evaluator):
    """The session's evaluator (the `evaluator` stage on digits), checked to be good."""
    model = load_classifier(digits_evaluator[0] / "classifier.pt")
    assert accuracy(model, load_split_tensors(digits_dir, "test")) > 0.93
    return model


def label_accuracy(classifier, model, num_samples: int = 500) -> float:
    labels = balanced_labels(model, num_samples)
    images = to_float_tensor(sample_uint8(model, num_samples, seed=1, labels=labels))
    _, probs = extract(classifier, images)
    return float(np.mean(np.asarray(probs).argmax(1) == labels))


def train(model, digits_dir, epochs: int, batch_size: int = 64):
    data = load_split_tensors(digits_dir, "train")
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    train_epochs(model, loader, epochs=epochs, log=None)
    return model.eval()


def test_conditional_vae_draws_the_requested_digit(digits_dir, digits_classifier):
    torch.manual_seed(0)
    model = VAE(VAEConfig(architecture="mlp", hidden=[128, 64], latent_dim=8, lr=3e-3,
                          conditional=True), (1, 8, 8)).setup()
    untrained = label_accuracy(digits_classifier, model)
    train(model, digits_dir, epochs=40)
    assert untrained < 0.3
    assert label_accuracy(digits_classifier, model) >= 0.85


def test_conditional_gan_draws_the_requested_digit(digits_dir, digits_classifier):
    torch.manual_seed(0)
    model = DCGAN(GANConfig(width=32, latent_dim=16, conditional=True, ema_decay=0.99,
                            lr_g=1e-3, lr_d=1e-3), (1, 8, 8)).setup()
    untrained = label_accuracy(digits_classifier, model)
    train(model, digits_dir, epochs=40)
    assert untrained < 0.3
    assert label_accuracy(digits_classifier, model) >= 0.8
