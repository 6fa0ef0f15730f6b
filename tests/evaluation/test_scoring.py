"""Validating and loading generated images; scoring them against the real train split."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dgm.data.parquet import DatasetMeta, images_to_table, read_meta, read_split
from dgm.errors import DgmError
from dgm.evaluation.classifier import Classifier, save_classifier
from dgm.evaluation.metrics import METRICS
from dgm.evaluation.scoring import ScoreResult, check_images, load_samples, score_images

META = DatasetMeta("digits", 8, 8, 1)


# --- check_images --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape", [(4, 8, 8, 3), (4, 28, 28, 1), (4, 8, 7, 1), (4, 64), (8, 8), (2, 1, 8, 8, 1)])
def test_check_images_wrong_shape(shape):
    with pytest.raises(DgmError, match="do not match digits"):
        check_images(np.zeros(shape, np.uint8), META, "s.npz")


def test_check_images_adds_channel_axis():
    out = check_images(np.full((3, 8, 8), 7, np.uint8), META, "s")
    assert out.shape == (3, 8, 8, 1) and out.dtype == np.uint8
    assert np.all(out == 7)


def test_check_images_keeps_uint8():
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    np.testing.assert_array_equal(check_images(images, META, "s"), images)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_images_non_finite(bad):
    images = np.full((4, 8, 8, 1), 0.5)
    images[2, 3, 4, 0] = bad
    with pytest.raises(DgmError, match="NaN or infinite"):
        check_images(images, META, "samples.npz")


@pytest.mark.parametrize("bad", [-0.01, 1.01, 255.0])
def test_check_images_floats_outside_unit_interval(bad):
    images = np.full((4, 8, 8, 1), 0.5, np.float32)
    images[0, 0, 0, 0] = bad
    with pytest.raises(DgmError, match=r"\[0, 1\]"):
        check_images(images, META, "s")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_images_converts_unit_floats(dtype):
    images = np.zeros((2, 8, 8, 1), dtype)
    images[0, 0, :4, 0] = [0.0, 0.2, 0.5, 1.0]
    out = check_images(images, META, "s")
    assert out.dtype == np.uint8 and out.shape == (2, 8, 8, 1)
    assert out[0, 0, :4, 0].tolist() == [0, 51, 128, 255]
    assert out.sum() == 51 + 128 + 255


@pytest.mark.parametrize("n", [0, 1])
def test_check_images_needs_two(n):
    with pytest.raises(DgmError, match=f"need at least 2 images, got {n}"):
        check_images(np.zeros((n, 8, 8, 1), np.uint8), META, "s")


def test_check_images_message_names_the_source():
    with pytest.raises(DgmError, match=r"^gen/samples\.npz: "):
        check_images(np.zeros((1, 8, 8, 1), np.uint8), META, "gen/samples.npz")


# --- load_samples --------------------------------------------------------------------------
def test_load_samples_npz(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    path = tmp_path / "s.npz"
    np.savez(path, images=images, other=np.arange(3))
    np.testing.assert_array_equal(load_samples(path, META), images)


def test_load_samples_npz_float(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, images=np.full((3, 8, 8), 1.0, np.float32))
    out = load_samples(path, META)
    assert out.shape == (3, 8, 8, 1) and np.all(out == 255)


def test_load_samples_npz_without_images(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, pictures=np.zeros((3, 8, 8, 1), np.uint8))
    with pytest.raises(DgmError, match="no 'images' array"):
        load_samples(path, META)


def test_load_samples_npz_not_a_zip(tmp_path):
    path = tmp_path / "s.npz"
    path.write_bytes(b"definitely not a zip archive")
    with pytest.raises(DgmError, match="not a readable .npz"):
        load_samples(path, META)


def test_load_samples_npz_with_pickled_object(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, images=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DgmError, match="not a readable .npz"):
        load_samples(path, META)


def test_load_samples_missing(tmp_path):
    with pytest.raises(DgmError, match="samples not found"):
        load_samples(tmp_path / "nope.npz", META)


def test_load_samples_parquet_file_and_dir(tmp_path, digits_dir):
    images = read_split(digits_dir, "val").images
    out = load_samples(digits_dir / "val", META)
    np.testing.assert_array_equal(out, images)
    path = tmp_path / "gen.parquet"
    pq.write_table(images_to_table(images[:5], None, read_meta(digits_dir / "val"), seed=3),
                   path)
    np.testing.assert_array_equal(load_samples(path, META), images[:5])


def test_load_samples_parquet_of_other_shape(tmp_path):
    path = tmp_path / "gen.parquet"
    meta = DatasetMeta("mnist", 28, 28, 1)
    pq.write_table(images_to_table(np.zeros((3, 28, 28, 1), np.uint8), None, meta), path)
    with pytest.raises(DgmError, match="do not match digits"):
        load_samples(path, META)


def test_load_samples_unreadable_parquet(tmp_path):
    path = tmp_path / "gen.parquet"
    path.write_bytes(b"PAR1 garbage")
    with pytest.raises(DgmError, match="not readable as Parquet"):
        load_samples(path, META)


def test_load_samples_plain_parquet(tmp_path):
    path = tmp_path / "gen.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(DgmError, match="not a dgm image Parquet file"):
        load_samples(path, META)


# --- score_images --------------------------------------------------------------------------
# An untrained evaluator has dead ReLU units: singular feature covariances are expected here.
pytestmark_singular = pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")

@pytest.fixture(scope="module")
def evaluator_dir(tmp_path_factory):
    """An untrained but seeded evaluator: enough for the arithmetic of scoring."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("evaluator")
    save_classifier(Classifier((1, 8, 8), 10), out / "classifier.pt", version="test")
    return out


@pytestmark_singular
def test_score_train_split_against_itself(digits_dir, evaluator_dir):
    images = read_split(digits_dir, "train").images
    result = score_images(images, digits_dir, evaluator_dir)
    assert set(result.metrics) == set(METRICS)
    assert abs(result.metrics["fid"]) < 1e-6
    assert result.metrics["class_kl"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_array_equal(result.real_histogram, result.generated_histogram)
    assert result.real_histogram.sum() == pytest.approx(1.0)
    assert result.class_names == tuple(str(i) for i in range(10))


@pytestmark_singular
def test_score_worse_images_score_worse(digits_dir, evaluator_dir):
    real = read_split(digits_dir, "test").images
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    good = score_images(real, digits_dir, evaluator_dir, metrics=["fid"]).metrics
    bad = score_images(noise, digits_dir, evaluator_dir, metrics=["fid"]).metrics
    assert set(good) == {"fid"}
    assert 0 <= good["fid"] < bad["fid"] / 5


def test_score_rejects_wrong_images(digits_dir, evaluator_dir):
    with pytest.raises(DgmError, match="do not match"):
        score_images(np.zeros((4, 28, 28, 1), np.uint8), digits_dir, evaluator_dir)


def test_score_without_evaluator(digits_dir, tmp_path):
    with pytest.raises(DgmError, match="evaluator not found"):
        score_images(np.zeros((4, 8, 8, 1), np.uint8), digits_dir, tmp_path)


def test_save_histogram_png(tmp_path):
    result = ScoreResult({"fid": 1.0}, np.full(10, 0.1), np.eye(10)[3],
                         tuple(str(i) for i in range(10)))
    path = result.save_histogram(tmp_path / "plots" / "hist.png")
    assert path == tmp_path / "plots" / "hist.png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
    assert math.isclose(width / height, 6 / 3.5, rel_tol=0.02)
