"""Raw datasets: embedded digits, IDX parsing, mirror lookup and checksum verification."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from dgm.data.sources import (
    DIGITS_FILE,
    IDX_DATASETS,
    RawDataset,
    StackedSpec,
    digits_file,
    load_raw,
    md5sum,
    read_idx,
    search_dirs,
    stack,
)
from dgm.errors import DgmError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# scikit-learn's digits: 1797 images, class counts 0..9.
DIGITS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def write_idx(path: Path, array: np.ndarray, *, type_code: int = 0x08) -> Path:
    """A gzip IDX file of unsigned bytes, written by hand (header + big-endian dims)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())
    return path


def write_gzip(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(payload)
    return path


# --- digits ------------------------------------------------------------------------------
def test_digits_shape_dtype_range_and_labels():
    raw = load_raw("digits", [])
    assert raw.name == "digits"
    assert raw.train_images.shape == (1797, 8, 8, 1)
    assert raw.train_images.dtype == np.uint8
    assert raw.train_images.min() == 0
    assert raw.train_images.max() == 255
    assert raw.train_labels.dtype == np.int64
    assert np.bincount(raw.train_labels, minlength=10).tolist() == DIGITS_COUNTS
    assert raw.test_images is None and raw.test_labels is None
    assert raw.class_names == [str(i) for i in range(10)]


def test_digits_rescales_0_16_to_0_255():
    raw = load_raw("digits", [])
    # First row of scikit-learn's first digit is 0 0 5 13 9 1 0 0 (scale 0..16).
    expected = np.rint(np.array([0, 0, 5, 13, 9, 1, 0, 0]) * 255 / 16).astype(np.uint8)
    assert raw.train_images[0, 0, :, 0].tolist() == expected.tolist()
    assert expected.tolist() == [0, 0, 80, 207, 143, 16, 0, 0]


def test_digits_checksum_is_md5_of_the_csv():
    raw = load_raw("digits", [])
    path = digits_file([])
    expected = hashlib.md5(path.read_bytes()).hexdigest()
    assert raw.checksums == {DIGITS_FILE: expected}
    assert len(expected) == 32


def test_digits_copy_in_search_dir_takes_precedence(tmp_path):
    rows = np.array([[16] * 64 + [3], [0] * 64 + [7], [8] * 64 + [1]], dtype=float)
    path = tmp_path / "digits" / DIGITS_FILE
    path.parent.mkdir()
    with gzip.open(path, "wt") as fh:
        np.savetxt(fh, rows, delimiter=",", fmt="%d")
    raw = load_raw("digits", [tmp_path / "elsewhere", tmp_path])
    assert raw.train_images.shape == (3, 8, 8, 1)
    assert raw.train_labels.tolist() == [3, 7, 1]
    assert np.unique(raw.train_images[0]).tolist() == [255]
    assert np.unique(raw.train_images[1]).tolist() == [0]
    assert np.unique(raw.train_images[2]).tolist() == [128]  # rint(8 * 255/16) = rint(127.5)
    assert raw.checksums == {DIGITS_FILE: hashlib.md5(path.read_bytes()).hexdigest()}


# --- IDX parsing ---------------------------------------------------------------------------
def test_read_idx_parses_hand_made_3d_file(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / "x-idx3-ubyte.gz", array))
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def test_read_idx_parses_1d_labels(tmp_path):
    labels = np.array([7, 0, 255, 3], dtype=np.uint8)
    out = read_idx(write_idx(tmp_path / "y-idx1-ubyte.gz", labels))
    assert out.tolist() == [7, 0, 255, 3]


def test_read_idx_dims_are_big_endian(tmp_path):
    # 300 = 0x0000012C; a little-endian reader would see 0x2C010000.
    array = np.full((300,), 9, dtype=np.uint8)
    assert read_idx(write_idx(tmp_path / "big.gz", array)).shape == (300,)


@pytest.mark.parametrize(
    "header",
    [
        bytes([0, 0, 0x09, 1]),  # signed byte type
        bytes([0, 0, 0x0D, 1]),  # float type
        bytes([1, 0, 0x08, 1]),  # non-zero first magic byte
        bytes([0, 1, 0x08, 1]),  # non-zero second magic byte
    ],
    ids=["signed", "float", "byte0", "byte1"],
)
def test_read_idx_rejects_bad_magic(tmp_path, header):
    path = write_gzip(tmp_path / "bad.gz", header + struct.pack(">I", 2) + bytes(2))
    with pytest.raises(DgmError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_rejects_file_shorter_than_magic(tmp_path):
    path = write_gzip(tmp_path / "tiny.gz", bytes([0, 0, 0x08]))
    with pytest.raises(DgmError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_rejects_truncated_payload(tmp_path):
    payload = bytes([0, 0, 8, 2]) + struct.pack(">II", 3, 4) + bytes(11)  # 11 of 12 values
    path = write_gzip(tmp_path / "short.gz", payload)
    with pytest.raises(DgmError, match="truncated: 11 of 12"):
        read_idx(path)


def test_read_idx_rejects_truncated_header(tmp_path):
    # Claims 3 dimensions but holds only one size.
    path = write_gzip(tmp_path / "hdr.gz", bytes([0, 0, 8, 3]) + struct.pack(">I", 2))
    with pytest.raises(DgmError):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip_file(tmp_path):
    path = write_idx(tmp_path / "cut.gz", np.random.default_rng(0).integers(0, 256, 4096))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DgmError):
        read_idx(path)


# --- IDX datasets: lookup and verification -------------------------------------------------
def test_unknown_dataset_name_is_dgm_error():
    with pytest.raises(DgmError, match="unknown dataset 'cifar'"):
        load_raw("cifar", [])


def test_missing_mnist_file_names_the_file(tmp_path):
    with pytest.raises(DgmError) as info:
        load_raw("mnist", [tmp_path])
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "mnist") in message
    assert "\n" not in message


def test_missing_mnist_with_no_dirs_says_nowhere():
    with pytest.raises(DgmError, match="nowhere"):
        load_raw("mnist", [])


def test_missing_one_file_of_four_names_that_file(tmp_path):
    for fname in list(IDX_DATASETS["mnist"].files)[:3]:
        write_gzip(tmp_path / "mnist" / fname, b"x")
    with pytest.raises(DgmError, match="t10k-labels-idx1-ubyte.gz"):
        load_raw("mnist", [tmp_path])


def test_wrong_bytes_in_fake_mirror_is_checksum_mismatch(tmp_path):
    for fname in IDX_DATASETS["mnist"].files:
        write_idx(tmp_path / "mnist" / fname, np.zeros((2, 2), np.uint8))
    with pytest.raises(DgmError) as info:
        load_raw("mnist", [tmp_path])
    message = str(info.value)
    assert "checksum mismatch" in message
    first = next(iter(IDX_DATASETS["mnist"].files))
    assert str(tmp_path / "mnist" / first) in message
    assert IDX_DATASETS["mnist"].files[first] in message


def test_md5sum_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = np.random.default_rng(1).bytes(3 * (1 << 20) + 17)  # spans several read blocks
    path.write_bytes(data)
    assert md5sum(path) == hashlib.md5(data).hexdigest()


def test_search_dirs_order(tmp_path, monkeypatch):
    monkeypatch.delenv("DGM_DATA_DIR", raising=False)
    assert search_dirs(tmp_path / "data") == [tmp_path / "data"]
    assert search_dirs() == []
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "mirror"))
    assert search_dirs(tmp_path / "data") == [tmp_path / "data", tmp_path / "mirror"]


# --- the real mirror ------------------------------------------------------------------------
@pytest.mark.mnist
def test_mnist_from_mirror(mirror_dir):
    raw = load_raw("mnist", [mirror_dir])
    assert raw.train_images.shape == (60000, 28, 28, 1)
    assert raw.test_images.shape == (10000, 28, 28, 1)
    assert raw.train_images.dtype == np.uint8
    assert raw.train_images.max() == 255
    assert np.bincount(raw.train_labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(raw.test_labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert raw.checksums == IDX_DATASETS["mnist"].files


@pytest.mark.mnist
def test_fashion_mnist_from_mirror_is_balanced(mirror_dir):
    if not (mirror_dir / "fashion-mnist" / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("no Fashion-MNIST in the mirror")
    raw = load_raw("fashion-mnist", [mirror_dir])
    assert raw.train_images.shape == (60000, 28, 28, 1)
    assert np.bincount(raw.train_labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(raw.test_labels, minlength=10).tolist() == [1000] * 10
    assert raw.class_names[0] == "T-shirt/top" and raw.class_names[9] == "Ankle boot"


# --- stacked datasets ----------------------------------------------------------------------
def toy_raw(n_train=40, n_test=15, k=10, channels=1, with_test=True) -> RawDataset:
    """One-channel 4x4 images whose pixel (0, 0) is the image's index (unique per split)."""
    def images(n):
        out = np.zeros((n, 4, 4, channels), np.uint8)
        out[:, 0, 0, :] = np.arange(n)[:, None]
        out[:, 1, 1, :] = 200  # every image also has common content
        return out

    return RawDataset(
        name="toy", train_images=images(n_train), train_labels=(np.arange(n_train) * 7) % k,
        test_images=images(n_test) if with_test else None,
        test_labels=(np.arange(n_test) * 3) % k if with_test else None,
        class_names=[f"c{i}" for i in range(k)], checksums={"toy.gz": "0" * 32},
    )


def drawn_indices(stacked: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(N, C): which base image each channel is, asserting it is exactly that image."""
    idx = stacked[:, 0, 0, :].astype(np.int64)
    for c in range(stacked.shape[-1]):
        np.testing.assert_array_equal(stacked[..., c], base[idx[:, c], ..., 0])
    return idx


def test_stack_shapes_channels_and_mode_labels():
    base = toy_raw()
    out = stack(base, StackedSpec(train_size=200, test_size=30, seed=0))
    assert out.name == "stacked-toy"
    assert out.train_images.shape == (200, 4, 4, 3) and out.train_images.dtype == np.uint8
    assert out.test_images.shape == (30, 4, 4, 3)
    assert out.train_labels.dtype == np.int64 and out.train_labels.shape == (200,)
    for images, labels, base_images, base_labels in (
        (out.train_images, out.train_labels, base.train_images, base.train_labels),
        (out.test_images, out.test_labels, base.test_images, base.test_labels),
    ):
        idx = drawn_indices(images, base_images)
        a, b, c = (base_labels[idx[:, ch]] for ch in range(3))
        np.testing.assert_array_equal(labels, 100 * a + 10 * b + c)
    # Channels are drawn independently: they are not all the same image.
    idx = drawn_indices(out.train_images, base.train_images)
    assert (idx[:, 0] != idx[:, 1]).mean() > 0.5
    assert len(np.unique(out.train_labels)) > 50


def test_stack_class_names_and_channel_class_names():
    base = toy_raw()
    out = stack(base, StackedSpec(train_size=10, test_size=5))
    assert out.class_names == [f"{m:03d}" for m in range(1000)]
    assert out.class_names[0] == "000" and out.class_names[-1] == "999"
    assert out.channel_class_names == base.class_names
    assert out.checksums == base.checksums
    assert base.channel_class_names == []  # the base is not stacked


def test_stack_other_channel_counts_and_class_counts():
    base = toy_raw(k=4)
    out = stack(base, StackedSpec(train_size=50, test_size=5, channels=2, seed=3))
    assert out.train_images.shape == (50, 4, 4, 2)
    assert out.class_names == [f"{m:02d}" for m in range(16)]
    idx = drawn_indices(out.train_images, base.train_images)
    np.testing.assert_array_equal(
        out.train_labels, 4 * base.train_labels[idx[:, 0]] + base.train_labels[idx[:, 1]])


def test_stack_is_deterministic_by_seed():
    base = toy_raw()
    a = stack(base, StackedSpec(train_size=100, test_size=20, seed=5))
    b = stack(base, StackedSpec(train_size=100, test_size=20, seed=5))
    c = stack(base, StackedSpec(train_size=100, test_size=20, seed=6))
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.train_images, c.train_images)
    assert not np.array_equal(a.test_images, c.test_images)


def test_stack_without_test_split():
    out = stack(toy_raw(with_test=False), StackedSpec(train_size=20, test_size=10))
    assert out.train_images.shape == (20, 4, 4, 3)
    assert out.test_images is None and out.test_labels is None


def test_stack_rejects_multichannel_dataset():
    with pytest.raises(DgmError, match="only one-channel datasets can be stacked, not toy"):
        stack(toy_raw(channels=3), StackedSpec(train_size=10, test_size=5))


def test_load_raw_stacked_digits():
    spec = StackedSpec(train_size=50, test_size=20, seed=1)
    out = load_raw("stacked-digits", [], stacked=spec)
    assert out.name == "stacked-digits"
    assert out.train_images.shape == (50, 8, 8, 3) and out.train_images.dtype == np.uint8
    assert out.train_labels.shape == (50,)
    assert out.train_labels.min() >= 0 and out.train_labels.max() < 1000
    assert out.test_images is None and out.test_labels is None  # digits has no test split
    assert out.channel_class_names == [str(i) for i in range(10)]
    assert len(out.class_names) == 1000
    assert out.checksums == load_raw("digits", []).checksums
    again = load_raw("stacked-digits", [], stacked=spec)
    np.testing.assert_array_equal(out.train_images, again.train_images)


def test_load_raw_stacked_default_spec():
    out = load_raw("stacked-digits", [])
    default = StackedSpec()
    assert len(out.train_images) == default.train_size and default.channels == 3


@pytest.mark.parametrize("name", ["stacked-cifar", "stacked-", "stacked-stacked-digits"])
def test_load_raw_stacked_unknown_base(name):
    with pytest.raises(DgmError, match=f"unknown dataset '{name}'"):
        load_raw(name, [])
