"""Validating and loading generated images; scoring them against the real train split."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dgm.data.loading import to_float_tensor
from dgm.data.parquet import DatasetMeta, images_to_table, read_meta, read_split
from dgm.errors import DgmError
from dgm.evaluation.classifier import Classifier, extract, load_classifier, save_classifier
from dgm.evaluation.metrics import METRICS, MetricOptions, Reference
from dgm.evaluation.reference import REFERENCE_FILE, build_reference, save_reference
from dgm.evaluation.scoring import (
    Evaluator,
    ScoreResult,
    check_images,
    load_png_folder,
    load_samples,
    score_images,
)

META = DatasetMeta("digits", 8, 8, 1)
META3 = DatasetMeta("stacked-digits", 8, 8, 3)
# Every key compute() reports when asked for all metrics (kid adds kid_std, swd swd_pixel).
ALL_KEYS = {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
            "class_entropy", "class_kl", "mode_kl", "modes_covered", "inception_score", "swd",
            "swd_pixel", "memorization"}
# Few KID subsets and SWD projections: the arithmetic is the same, the tests much faster.
FAST = MetricOptions(kid_subsets=5, swd_projections=32)


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

@pytest.fixture(scope="module")
def evaluator_dir(tmp_path_factory):
    """An untrained but seeded evaluator: enough for the arithmetic of scoring."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("evaluator")
    save_classifier(Classifier((1, 8, 8), 10), out / "classifier.pt", version="test")
    return out


def test_score_train_split_against_itself(digits_dir, evaluator_dir):
    images = read_split(digits_dir, "train").images
    result = score_images(images, digits_dir, evaluator_dir, options=FAST)
    assert set(METRICS) <= ALL_KEYS
    assert set(result.metrics) == ALL_KEYS
    assert abs(result.metrics["fid"]) < 1e-6
    assert result.metrics["swd"] == pytest.approx(0.0, abs=1e-5)
    assert result.metrics["swd_pixel"] == pytest.approx(0.0, abs=1e-6)
    assert result.metrics["memorization"] == 1.0  # every image is its own nearest neighbour
    assert result.metrics["class_kl"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_array_equal(result.real_histogram, result.generated_histogram)
    assert result.real_histogram.sum() == pytest.approx(1.0)
    assert result.class_names == tuple(str(i) for i in range(10))


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


# --- more input shapes ---------------------------------------------------------------------
def test_check_images_accepts_float_nhw_for_one_channel():
    images = np.full((3, 8, 8), 0.2, np.float32)
    out = check_images(images, META, "s")
    assert out.shape == (3, 8, 8, 1) and out.dtype == np.uint8
    assert np.all(out == 51)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_check_images_rejects_nhw_for_three_channels(dtype):
    with pytest.raises(DgmError, match=r"do not match stacked-digits \(8x8x3\)"):
        check_images(np.zeros((4, 8, 8), dtype), META3, "s")


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_check_images_rejects_wrong_channel_count(channels):
    with pytest.raises(DgmError, match="do not match stacked-digits"):
        check_images(np.zeros((4, 8, 8, channels), np.uint8), META3, "s")


def test_check_images_accepts_three_channels():
    images = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(check_images(images, META3, "s"), images)


@pytest.mark.parametrize("name", ["s.npz", "s.parquet", "s.bin"])
def test_load_samples_empty_file(tmp_path, name):
    path = tmp_path / name
    path.touch()
    with pytest.raises(DgmError, match="empty file") as info:
        load_samples(path, META)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --- PNG folders ---------------------------------------------------------------------------
def write_pngs(folder, images: np.ndarray, mode: str, names=None) -> list:
    """Write each (H, W) or (H, W, 3) uint8 image as one PNG of ``mode``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / (names[i] if names else f"{i:03d}.png")
        Image.fromarray(image, mode=mode).save(path)
        paths.append(path)
    return paths


def test_load_samples_png_folder_grayscale(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    # Written out of name order: the folder is read sorted by file name.
    write_pngs(tmp_path / "pngs", images[::-1], "L", names=[f"{i}.png" for i in "edcba"])
    (tmp_path / "pngs" / "notes.txt").write_text("not an image")
    out = load_samples(tmp_path / "pngs", META)
    assert out.shape == (5, 8, 8, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], images)


def test_load_samples_png_folder_rgb_for_three_channels(tmp_path):
    images = np.random.default_rng(4).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    write_pngs(tmp_path / "pngs", images, "RGB")
    np.testing.assert_array_equal(load_samples(tmp_path / "pngs", META3), images)


def test_load_samples_png_folder_palette_is_converted(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").convert("P").save(folder / f"{i}.png")
    out = load_samples(folder, META)
    assert out.shape == (3, 8, 8, 1)


def test_png_folder_rgb_rejected_for_one_channel(tmp_path):
    write_pngs(tmp_path / "pngs", np.zeros((3, 8, 8, 3), np.uint8), "RGB")
    with pytest.raises(DgmError, match=r"PNG mode RGB does not fit digits \(1 channel") as info:
        load_samples(tmp_path / "pngs", META)
    assert "\n" not in str(info.value)


def test_png_folder_grayscale_rejected_for_three_channels(tmp_path):
    write_pngs(tmp_path / "pngs", np.zeros((3, 8, 8), np.uint8), "L")
    with pytest.raises(DgmError, match=r"PNG mode L does not fit stacked-digits \(3 channel"):
        load_samples(tmp_path / "pngs", META3)


def test_png_folder_mixed_sizes_rejected(tmp_path):
    write_pngs(tmp_path / "pngs", np.zeros((2, 8, 8), np.uint8), "L")
    write_pngs(tmp_path / "pngs", np.zeros((1, 9, 8), np.uint8), "L", names=["z.png"])
    with pytest.raises(DgmError, match="PNGs of different sizes"):
        load_samples(tmp_path / "pngs", META)


def test_png_folder_of_wrong_size_rejected(tmp_path):
    write_pngs(tmp_path / "pngs", np.zeros((3, 28, 28), np.uint8), "L")
    with pytest.raises(DgmError, match="do not match digits"):
        load_samples(tmp_path / "pngs", META)


@pytest.mark.parametrize("content", [None, "readme.txt"], ids=["empty", "no-png"])
def test_folder_without_pngs_rejected(tmp_path, content):
    folder = tmp_path / "pngs"
    folder.mkdir()
    if content:
        (folder / content).write_text("hello")
    with pytest.raises(DgmError, match="no .png files"):
        load_samples(folder, META)


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_png_folder_with_unreadable_png_rejected(tmp_path, kind):
    good = write_pngs(tmp_path / "pngs", np.full((2, 8, 8), 9, np.uint8), "L")
    bad = tmp_path / "pngs" / "001b.png"
    bad.write_bytes({"garbage": b"this is not a PNG at all", "empty": b"",
                     "truncated": good[0].read_bytes()[:40]}[kind])
    with pytest.raises(DgmError, match="not a readable PNG") as info:
        load_samples(tmp_path / "pngs", META)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_png_folder_needs_one_or_three_channels(tmp_path):
    write_pngs(tmp_path / "pngs", np.zeros((2, 8, 8), np.uint8), "L")
    with pytest.raises(DgmError, match="1- or 3-channel"):
        load_png_folder(tmp_path / "pngs", DatasetMeta("two", 8, 8, 2))


# --- Evaluator -----------------------------------------------------------------------------
def _copy_classifier(evaluator_dir, dest, version=None):
    """``dest/classifier.pt``: the module's evaluator, optionally under another version."""
    model = load_classifier(evaluator_dir / "classifier.pt")
    return save_classifier(model, dest / "classifier.pt", version=version or model.version)


@pytest.mark.parametrize("how", ["dir", "file", "no-suffix"])
def test_evaluator_open_dir_or_file(digits_dir, evaluator_dir, tmp_path, how):
    path = _copy_classifier(evaluator_dir, tmp_path / "ev")
    target = {"dir": path.parent, "file": path, "no-suffix": path.parent}[how]
    evaluator = Evaluator.open(target, digits_dir)
    assert evaluator.meta.name == "digits" and evaluator.meta.shape_chw == (1, 8, 8)
    assert evaluator.classifier.version == "test"
    n_train = len(read_split(digits_dir, "train").images)
    assert evaluator.reference.features.shape == (n_train, 128)
    assert evaluator.feature_scale > 0


def test_evaluator_open_reuses_matching_reference(digits_dir, evaluator_dir, tmp_path):
    path = _copy_classifier(evaluator_dir, tmp_path / "ev")
    classifier = load_classifier(path)
    reference, info = build_reference(classifier, digits_dir)
    # A recognisably different reference: only reuse (not a rebuild) can return it.
    reference = Reference(features=reference.features[:100] * 0 + 1.5,
                          histogram=reference.histogram, pixels=reference.pixels[:100],
                          holdout_nn_distances=reference.holdout_nn_distances)
    info = {**info, "feature_scale": 2.5}
    save_reference(reference, info, path.parent / REFERENCE_FILE)
    for data_dir in (None, digits_dir, tmp_path / "missing"):
        evaluator = Evaluator.open(path.parent, data_dir)
        assert evaluator.feature_scale == 2.5
        np.testing.assert_array_equal(evaluator.reference.features, reference.features)


def test_evaluator_open_rebuilds_stale_reference(digits_dir, evaluator_dir, tmp_path):
    path = _copy_classifier(evaluator_dir, tmp_path / "ev", version="new")
    classifier = load_classifier(path)
    reference, info = build_reference(classifier, digits_dir)
    stale = Reference(features=reference.features[:100] * 0 + 1.5,
                      histogram=reference.histogram, pixels=reference.pixels[:100],
                      holdout_nn_distances=reference.holdout_nn_distances)
    save_reference(stale, {**info, "evaluator_version": "old", "feature_scale": 2.5},
                   path.parent / REFERENCE_FILE)
    evaluator = Evaluator.open(path, digits_dir)
    assert evaluator.feature_scale == pytest.approx(info["feature_scale"])
    np.testing.assert_allclose(evaluator.reference.features, reference.features, atol=1e-6)
    # Without the data to rebuild from, a stale reference is as good as none.
    with pytest.raises(DgmError, match="evaluator reference not found"):
        Evaluator.open(path, None)


@pytest.mark.parametrize("data", ["none", "missing-dir"])
def test_evaluator_open_without_reference_or_data(evaluator_dir, tmp_path, data):
    path = _copy_classifier(evaluator_dir, tmp_path / "ev")
    data_dir = None if data == "none" else tmp_path / "no-data"
    with pytest.raises(DgmError, match="evaluator reference not found") as info:
        Evaluator.open(path.parent, data_dir)
    message = str(info.value)
    assert "\n" not in message and str(path.parent / REFERENCE_FILE) in message


def test_evaluator_open_missing_classifier(tmp_path, digits_dir):
    with pytest.raises(DgmError, match="evaluator not found"):
        Evaluator.open(tmp_path / "nothing-here", digits_dir)


def test_extract_independent_of_batch_size_on_digits(evaluator_dir, digits_dir):
    model = load_classifier(evaluator_dir / "classifier.pt")
    x = to_float_tensor(read_split(digits_dir, "test").images)
    f7, p7 = extract(model, x, batch_size=7)
    f1000, p1000 = extract(model, x, batch_size=1000)
    np.testing.assert_allclose(f7, f1000, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p7, p1000, rtol=1e-5, atol=1e-6)


def test_featurize_divides_by_feature_scale(evaluator_dir, digits_dir):
    model = load_classifier(evaluator_dir / "classifier.pt")
    images = read_split(digits_dir, "val").images
    reference = Reference(features=np.zeros((2, 128)), histogram=np.full(10, 0.1))
    raw_features, probs = extract(model, to_float_tensor(images))
    for scale in (1.0, 4.0, 0.25):
        gen = Evaluator(model, reference, META, feature_scale=scale).featurize(images)
        np.testing.assert_allclose(gen.features, raw_features / scale, rtol=1e-6)
        np.testing.assert_allclose(gen.probs, probs, rtol=1e-6)
        assert gen.pixels.shape == (len(images), 64)
        assert gen.pixels.min() >= 0 and gen.pixels.max() <= 1


def test_evaluator_score_uses_its_reference(digits_dir, evaluator_dir):
    evaluator = Evaluator.open(evaluator_dir, digits_dir)
    test_images = read_split(digits_dir, "test").images
    result = evaluator.score(test_images[:60], ["fid", "class_kl"], FAST)
    assert set(result.metrics) == {"fid", "class_kl"}
    assert result.metrics["fid"] > 0
    assert result.class_names == tuple(str(i) for i in range(10))
    np.testing.assert_allclose(result.real_histogram, evaluator.reference.class_histogram)
    with pytest.raises(DgmError, match="do not match"):
        evaluator.score(np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(DgmError, match="unknown metric"):
        evaluator.score(test_images[:10], ["fid", "bogus"])


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.uint16])
def test_check_images_integer_pixels(dtype):
    images = np.zeros((2, 8, 8, 1), dtype)
    images[0, 0, :3, 0] = [0, 7, 255]
    out = check_images(images, META, "s")
    assert out.dtype == np.uint8 and out[0, 0, :3, 0].tolist() == [0, 7, 255]


@pytest.mark.parametrize("bad", [-1, 256])
def test_check_images_integer_pixels_out_of_range(bad):
    images = np.zeros((2, 8, 8, 1), np.int64)
    images[1, 1, 1, 0] = bad
    with pytest.raises(DgmError, match=r"integer images must lie in 0\.\.255"):
        check_images(images, META, "s")
