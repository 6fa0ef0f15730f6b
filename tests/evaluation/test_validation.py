"""The val metric tuning trials report: the evaluator's judgement on the val split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import digits_project

from dgm.data.loading import to_float_tensor
from dgm.data.parquet import read_split
from dgm.errors import DgmError
from dgm.evaluation.likelihood import check_metric, negative_log_likelihood
from dgm.evaluation.validation import ValidationScorer
from dgm.models.registry import build_model, config_from_dict, validation_metric


class ReplayModel:
    """Stands in for a generator: its 'samples' are the given images, in order."""

    conditional = False
    family = "replay"

    def __init__(self, images: np.ndarray):
        self.images = images

    def sample(self, num_samples, generator=None, labels=None):
        x = torch.as_tensor(self.images[:num_samples]).float() / 255.0
        return x.permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def tune_project(tmp_path_factory, digits_dir, digits_evaluator):
    """A digits project with a copy of the session's evaluator."""
    return digits_project(tmp_path_factory.mktemp("validation"), digits_dir, digits_evaluator[0])


def paths(project):
    return project / "artifacts/data/digits", project / "artifacts/evaluator/digits"


def test_defaults_per_family():
    assert validation_metric("gan") == "fid"
    assert validation_metric("vae") == validation_metric("rbm") == "nll_nats"
    assert check_metric("kid") == "kid"
    with pytest.raises(DgmError, match="unknown validation metric"):
        check_metric("fidd")


def test_val_fid_is_zero_for_the_val_images_and_large_for_noise(tune_project):
    data_dir, evaluator_dir = paths(tune_project)
    val = read_split(data_dir, "val").images
    scorer = ValidationScorer.open("fid", data_dir, evaluator_dir, num_samples=len(val))
    assert scorer.key == "val_fid"
    same = scorer(ReplayModel(val))["val_fid"]
    assert abs(same) < 1e-3
    noise = np.random.default_rng(0).integers(0, 256, val.shape, dtype=np.uint8)
    far = scorer(ReplayModel(noise))["val_fid"]
    train = read_split(data_dir, "train").images[: len(val)]
    near = scorer(ReplayModel(train))["val_fid"]  # other real digits: close, not identical
    assert same < near < far / 5  # (144 images: FID is biased upward, the order holds)


def test_val_nll_is_the_models_likelihood_on_the_val_images(tune_project):
    data_dir, _ = paths(tune_project)
    torch.manual_seed(0)
    vae = build_model(config_from_dict({"family": "vae", "width": 8, "latent_dim": 4}),
                      (1, 8, 8)).setup()
    scorer = ValidationScorer.open("nll_nats", data_dir, importance_samples=8, max_images=50,
                                   seed=3)
    images = to_float_tensor(read_split(data_dir, "val").images[:50])
    expected = negative_log_likelihood(vae, images, 8, seed=3)["nll_nats"]
    assert scorer(vae) == {"val_nll_nats": pytest.approx(expected)}
    assert scorer(vae) == scorer(vae)  # the same draws every epoch: comparable across epochs
    gan = build_model(config_from_dict({"family": "gan", "width": 8, "latent_dim": 4}),
                      (1, 8, 8))
    with pytest.raises(DgmError, match="no likelihood"):
        scorer(gan)


def test_sample_metrics_need_the_evaluator(tune_project):
    data_dir, _ = paths(tune_project)
    with pytest.raises(DgmError, match="needs the evaluator"):
        ValidationScorer.open("fid", data_dir, None)
