"""The evaluator's reference of the real data: build, feature scale, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dgm.data.parquet import read_split
from dgm.errors import DgmError
from dgm.evaluation.classifier import Classifier
from dgm.evaluation.reference import (
    PIXEL_SAMPLES,
    build_reference,
    load_reference,
    meta_from_info,
    save_reference,
)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    """Untrained but seeded: the reference's arithmetic does not need a good classifier."""
    torch.manual_seed(0)
    model = Classifier((1, 8, 8), 10).eval()
    model.version = "t"
    return model


@pytest.fixture(scope="module")
def built(classifier, digits_dir):
    return build_reference(classifier, digits_dir, seed=0)


def test_features_have_unit_mean_variance(built, digits_dir):
    reference, info = built
    n_train = len(read_split(digits_dir, "train").images)
    assert reference.features.shape == (n_train, 128)
    assert reference.features.dtype == np.float32
    mean_var = reference.features.astype(np.float64).var(axis=0).mean()
    assert mean_var == pytest.approx(1.0, rel=1e-4)
    assert info["feature_scale"] > 0


def test_feature_scale_is_the_root_mean_variance_of_raw_features(built, classifier, digits_dir):
    from dgm.data.loading import to_float_tensor
    from dgm.evaluation.classifier import extract

    reference, info = built
    raw, _ = extract(classifier, to_float_tensor(read_split(digits_dir, "train").images))
    assert info["feature_scale"] == pytest.approx(np.sqrt(raw.var(axis=0).mean()), rel=1e-4)
    np.testing.assert_allclose(reference.features, raw / info["feature_scale"], atol=1e-5)


def test_histogram_is_a_distribution_of_argmax_classes(built, classifier, digits_dir):
    reference, _ = built
    assert reference.histogram.shape == (10,)
    assert reference.histogram.sum() == pytest.approx(1.0)
    assert np.all(reference.histogram >= 0)
    n_train = len(read_split(digits_dir, "train").images)
    counts = reference.histogram * n_train
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-6)  # shares of whole images


def test_pixels_are_a_unit_interval_subsample(built, digits_dir):
    reference, _ = built
    train = read_split(digits_dir, "train").images
    assert reference.pixels.ndim == 2 and reference.pixels.shape[1] == 64
    assert len(reference.pixels) <= PIXEL_SAMPLES
    assert len(reference.pixels) == min(PIXEL_SAMPLES, len(train))
    assert reference.pixels.min() >= 0 and reference.pixels.max() <= 1
    # digits' train split is smaller than PIXEL_SAMPLES: every image, in order.
    np.testing.assert_allclose(reference.pixels, train.reshape(len(train), -1) / 255.0,
                               atol=1e-7)


def test_pixel_subsample_is_capped(classifier, digits_dir, monkeypatch):
    import dgm.evaluation.reference as reference_module

    monkeypatch.setattr(reference_module, "PIXEL_SAMPLES", 100)
    a, _ = build_reference(classifier, digits_dir, seed=1)
    b, _ = build_reference(classifier, digits_dir, seed=1)
    c, _ = build_reference(classifier, digits_dir, seed=2)
    assert a.pixels.shape == (100, 64)
    np.testing.assert_array_equal(a.pixels, b.pixels)  # seeded
    assert not np.array_equal(a.pixels, c.pixels)


def test_holdout_distances_one_per_test_image(built, digits_dir):
    reference, info = built
    n_test = len(read_split(digits_dir, "test").images)
    assert reference.holdout_nn_distances.shape == (n_test,)
    assert np.all(reference.holdout_nn_distances >= 0)
    assert np.all(np.isfinite(reference.holdout_nn_distances))
    assert info["test_rows"] == n_test


def test_info_describes_dataset_and_evaluator(built, digits_dir):
    _, info = built
    assert info["evaluator_version"] == "t"
    assert info["train_rows"] == len(read_split(digits_dir, "train").images)
    meta = meta_from_info(info)
    assert meta == read_split(digits_dir, "train").meta
    assert not meta.stacked
    json.dumps(info)  # stored as JSON inside the .npz


def test_save_load_round_trip(built, tmp_path):
    reference, info = built
    path = save_reference(reference, info, tmp_path / "ev" / "reference.npz")
    assert path == tmp_path / "ev" / "reference.npz"
    assert [p.name for p in path.parent.iterdir()] == ["reference.npz"]  # no temp leftovers
    loaded, loaded_info = load_reference(path)
    assert loaded_info == info
    np.testing.assert_array_equal(loaded.features, reference.features)
    np.testing.assert_array_equal(loaded.histogram, reference.histogram)
    np.testing.assert_array_equal(loaded.holdout_nn_distances, reference.holdout_nn_distances)
    # Pixels are stored as uint8: equal up to quantisation.
    assert loaded.pixels.shape == reference.pixels.shape
    np.testing.assert_allclose(loaded.pixels, reference.pixels, atol=1 / 255)
    assert loaded.pixels.min() >= 0 and loaded.pixels.max() <= 1


def test_load_missing_reference(tmp_path):
    with pytest.raises(DgmError, match="evaluator reference not found"):
        load_reference(tmp_path / "reference.npz")


@pytest.mark.parametrize("kind", ["text", "npz-without-info", "torch-file"])
def test_load_non_reference_file(tmp_path, kind):
    path = tmp_path / "reference.npz"
    if kind == "text":
        path.write_text("not a reference")
    elif kind == "npz-without-info":
        np.savez(path, images=np.zeros((2, 8, 8, 1), np.uint8))
    else:
        torch.save({"a": 1}, path)
    with pytest.raises(DgmError, match="is not a dgm evaluator reference") as info:
        load_reference(path)
    assert "\n" not in str(info.value)
