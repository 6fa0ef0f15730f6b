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
    digits_file,
    load_raw,
    md5sum,
    read_idx,
    search_dirs,
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
