"""The Parquet layout: splits, shards, schema, round trips, atomic writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dgm.data.parquet as parquet
from dgm.data.parquet import (
    DatasetMeta,
    decode_table,
    images_to_table,
    read_images,
    read_meta,
    read_split,
    split_indices,
    write_dataset,
)
from dgm.data.sources import DIGITS_FILE, RawDataset, StackedSpec, load_raw
from dgm.errors import DgmError

N_DIGITS = 1797


@pytest.fixture(scope="module")
def digits_raw() -> RawDataset:
    return load_raw("digits", [])


def write(raw, out, seed=0, shard_rows=500, val_fraction=0.1, test_fraction=0.2):
    return write_dataset(raw, out, val_fraction=val_fraction, test_fraction=test_fraction,
                         seed=seed, shard_rows=shard_rows)


def row_keys(images: np.ndarray, labels: np.ndarray) -> set[bytes]:
    """Each row as bytes (pixels + label) so splits can be compared as sets."""
    flat = images.reshape(len(images), -1)
    return {flat[i].tobytes() + int(labels[i]).to_bytes(8, "little", signed=True)
            for i in range(len(images))}


def tiny_meta(**kw) -> DatasetMeta:
    return DatasetMeta(kw.pop("name", "tiny"), kw.pop("height", 2), kw.pop("width", 3),
                       kw.pop("channels", 1), **kw)


# --- splits --------------------------------------------------------------------------------
def test_split_sizes(digits_dir):
    sizes = {s: len(read_split(digits_dir, s).labels) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == N_DIGITS
    assert sizes["test"] == round(0.2 * N_DIGITS) == 359
    assert sizes["val"] == round(0.1 * (N_DIGITS - 359)) == 144
    assert sizes["train"] == N_DIGITS - 359 - 144


def test_write_dataset_returns_rows_per_split(digits_raw, tmp_path):
    sizes = write(digits_raw, tmp_path / "out")
    assert sizes == {"train": 1294, "val": 144, "test": 359}


def test_splits_do_not_overlap_and_cover_everything(digits_dir, digits_raw):
    keys = {s: row_keys(read_split(digits_dir, s).images, read_split(digits_dir, s).labels)
            for s in ("train", "val", "test")}
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]
    everything = row_keys(digits_raw.train_images, digits_raw.train_labels)
    assert keys["train"] | keys["val"] | keys["test"] == everything


def test_split_indices_partition():
    keep, carved = split_indices(100, 0.25, seed=3)
    assert len(carved) == 25 and len(keep) == 75
    assert np.array_equal(np.sort(np.concatenate([keep, carved])), np.arange(100))
    assert np.all(np.diff(keep) > 0) and np.all(np.diff(carved) > 0)
    # Always carves at least one row.
    assert len(split_indices(3, 0.01, seed=0)[1]) == 1


def test_same_seed_gives_identical_arrays(digits_raw, tmp_path):
    write(digits_raw, tmp_path / "a", seed=5)
    write(digits_raw, tmp_path / "b", seed=5)
    for split in ("train", "val", "test"):
        a, b = read_split(tmp_path / "a", split), read_split(tmp_path / "b", split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_different_seed_gives_different_val_set(digits_raw, tmp_path):
    write(digits_raw, tmp_path / "a", seed=0)
    write(digits_raw, tmp_path / "b", seed=1)
    a, b = read_split(tmp_path / "a", "val"), read_split(tmp_path / "b", "val")
    assert len(a.labels) == len(b.labels)
    ka, kb = row_keys(a.images, a.labels), row_keys(b.images, b.labels)
    # Random 144-of-1438 draws share ~10% of rows; identical sets would mean no reshuffle.
    assert len(ka & kb) < len(ka) // 2


def test_own_test_split_is_kept(tmp_path):
    rng = np.random.default_rng(0)
    raw = RawDataset(
        name="toy", train_images=rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8),
        train_labels=np.arange(50) % 3,
        test_images=rng.integers(0, 256, (7, 4, 4, 1), dtype=np.uint8),
        test_labels=np.arange(7) % 3, class_names=["a", "b", "c"],
    )
    sizes = write(raw, tmp_path / "toy", val_fraction=0.2)
    assert sizes == {"train": 40, "val": 10, "test": 7}
    test = read_split(tmp_path / "toy", "test")
    np.testing.assert_array_equal(test.images, raw.test_images)
    np.testing.assert_array_equal(test.labels, raw.test_labels)


# --- shards and schema ---------------------------------------------------------------------
def test_shard_count(digits_raw, tmp_path):
    sizes = write(digits_raw, tmp_path / "out", shard_rows=100)
    for split, n in sizes.items():
        files = sorted((tmp_path / "out" / split).glob("part-*.parquet"))
        assert len(files) == math.ceil(n / 100), split
        rows = [pq.read_metadata(f).num_rows for f in files]
        assert rows[:-1] == [100] * (len(files) - 1)
        assert sum(rows) == n
    assert [f.name for f in sorted((tmp_path / "out" / "val").iterdir())] == [
        "part-00000.parquet", "part-00001.parquet"]


def test_schema_and_metadata(digits_dir):
    files = sorted((digits_dir / "train").glob("*.parquet"))
    schema = pq.read_schema(files[0])
    assert schema.field("image").type == pa.binary(64)
    assert schema.field("image").nullable is False
    assert schema.field("label").type == pa.int64()
    assert schema.field("label").nullable is True
    md = schema.metadata
    assert md[b"dgm.dataset"] == b"digits"
    assert (md[b"dgm.height"], md[b"dgm.width"], md[b"dgm.channels"]) == (b"8", b"8", b"1")
    assert json.loads(md[b"dgm.class_names"]) == [str(i) for i in range(10)]
    checksums = json.loads(md[b"dgm.checksums"])
    assert list(checksums) == [DIGITS_FILE] and len(checksums[DIGITS_FILE]) == 32


def test_read_meta(digits_dir):
    meta = read_meta(digits_dir / "val")
    assert meta.name == "digits"
    assert meta.shape_chw == (1, 8, 8)
    assert meta.image_bytes == 64
    assert meta.class_names == tuple(str(i) for i in range(10))


def test_meta_metadata_round_trip():
    meta = DatasetMeta("x", 28, 20, 3, ("cat", "dog"), {"f.gz": "abc"})
    assert DatasetMeta.from_metadata(meta.to_metadata(), "src") == meta


# --- tables --------------------------------------------------------------------------------
def test_round_trip_exact(digits_raw, digits_dir):
    parts = [read_split(digits_dir, s) for s in ("train", "val", "test")]
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    assert images.dtype == np.uint8 and images.shape == (N_DIGITS, 8, 8, 1)
    # Same multiset of rows as the raw data, byte for byte.
    order_a = np.lexsort(images.reshape(N_DIGITS, -1).T[::-1])
    raw_flat = digits_raw.train_images.reshape(N_DIGITS, -1)
    order_b = np.lexsort(raw_flat.T[::-1])
    np.testing.assert_array_equal(images[order_a], digits_raw.train_images[order_b])
    assert sorted(labels.tolist()) == sorted(digits_raw.train_labels.tolist())


def test_images_to_table_round_trip_keeps_pixel_order():
    meta = DatasetMeta("rgb", 2, 4, 3)
    images = np.arange(5 * 2 * 4 * 3, dtype=np.uint8).reshape(5, 2, 4, 3)
    table = images_to_table(images, np.array([0, 1, 2, 3, 4]), meta)
    assert table.column("image").type == pa.binary(24)
    assert table.column("image")[1].as_py() == images[1].tobytes()
    out = decode_table(table, meta)
    np.testing.assert_array_equal(out.images, images)
    assert out.labels.tolist() == [0, 1, 2, 3, 4]


def test_labels_none_gives_nulls_and_minus_one():
    meta = tiny_meta()
    table = images_to_table(np.zeros((4, 2, 3, 1), np.uint8), None, meta)
    assert table.column("label").null_count == 4
    out = decode_table(table, meta)
    assert out.labels.dtype == np.int64
    assert out.labels.tolist() == [-1, -1, -1, -1]


def test_negative_labels_become_nulls():
    meta = tiny_meta()
    table = images_to_table(np.zeros((3, 2, 3, 1), np.uint8), np.array([2, -1, 0]), meta)
    assert table.column("label").to_pylist() == [2, None, 0]
    assert decode_table(table, meta).labels.tolist() == [2, -1, 0]


def test_seed_column():
    meta = tiny_meta()
    table = images_to_table(np.zeros((3, 2, 3, 1), np.uint8), None, meta, seed=42)
    assert table.schema.field("seed").type == pa.int64()
    assert table.column("seed").to_pylist() == [42, 42, 42]


def test_images_to_table_rejects_wrong_shape():
    with pytest.raises(DgmError, match="do not match tiny"):
        images_to_table(np.zeros((2, 3, 2, 1), np.uint8), None, tiny_meta())


def test_decode_empty_table():
    meta = tiny_meta()
    out = decode_table(images_to_table(np.zeros((0, 2, 3, 1), np.uint8), None, meta), meta)
    assert out.images.shape == (0, 2, 3, 1) and out.labels.shape == (0,)


@pytest.mark.parametrize("image", [
    pa.array([b"\x00" * 6, b"\x00" * 5], pa.binary()),  # variable length, one short
    pa.array([b"\x00" * 6] * 2, pa.binary()),  # variable length, all the right size
    pa.array([b"\x00" * 12] * 2, pa.binary(12)),  # bigger images: would be read as 2x3 garbage
    pa.array([b"\x00" * 4] * 2, pa.binary(4)),
])
def test_decode_refuses_an_image_column_that_is_not_the_declared_size(image):
    meta = tiny_meta()  # 2x3x1: fixed_size_binary[6]
    table = pa.table({"image": image, "label": pa.array([0, 1], pa.int64())})
    with pytest.raises(DgmError, match=r"image column of type .*fixed_size_binary\[6\]"):
        decode_table(table, meta)


# --- errors --------------------------------------------------------------------------------
def test_read_split_unknown_split(digits_dir):
    with pytest.raises(DgmError, match="unknown split 'validation'"):
        read_split(digits_dir, "validation")


def test_read_meta_of_non_dgm_parquet(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)
    with pytest.raises(DgmError, match="not a dgm image Parquet file"):
        read_meta(path)
    with pytest.raises(DgmError, match="not a dgm image Parquet file"):
        read_images(path)


def test_read_meta_of_empty_dir(tmp_path):
    with pytest.raises(DgmError, match="no Parquet data"):
        read_meta(tmp_path)
    with pytest.raises(DgmError, match="no Parquet data"):
        read_meta(tmp_path / "missing.parquet")


# --- atomicity -----------------------------------------------------------------------------
def fail_on_call(monkeypatch, n: int) -> list:
    """Make the ``n``-th ``pq.write_table`` call inside dgm.data.parquet raise OSError."""
    real_write = pq.write_table
    calls = []

    def failing_write(table, where, *args, **kwargs):
        calls.append(where)
        if len(calls) == n:
            raise OSError("disk full")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(parquet.pq, "write_table", failing_write)
    return calls


def test_failure_midway_leaves_no_output(digits_raw, tmp_path, monkeypatch):
    calls = fail_on_call(monkeypatch, 2)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        write(digits_raw, out)
    assert len(calls) == 2
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


def test_failure_midway_keeps_previous_output(digits_raw, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write(digits_raw, out, seed=0, shard_rows=1000)
    before = {s: read_split(out, s).images.copy() for s in ("train", "val", "test")}
    files_before = sorted(p.relative_to(out) for p in out.rglob("*"))
    calls = fail_on_call(monkeypatch, 3)
    with pytest.raises(OSError, match="disk full"):
        write(digits_raw, out, seed=1, shard_rows=100)
    assert len(calls) == 3
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files_before
    for split, images in before.items():
        np.testing.assert_array_equal(read_split(out, split).images, images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_rewrite_replaces_previous_output(digits_raw, tmp_path):
    out = tmp_path / "out"
    write(digits_raw, out, shard_rows=100)
    assert len(list((out / "train").glob("*.parquet"))) == 13
    write(digits_raw, out, shard_rows=1000)
    assert len(list((out / "train").glob("*.parquet"))) == 2  # no stale shards
    assert len(read_split(out, "train").labels) == 1294


# --- stacked datasets ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def stacked_raw() -> RawDataset:
    return load_raw("stacked-digits", [], stacked=StackedSpec(train_size=50, test_size=20,
                                                              seed=1))


def test_stacked_dataset_keeps_channel_class_names(stacked_raw, tmp_path):
    sizes = write(stacked_raw, tmp_path / "sd", shard_rows=16)
    assert sizes == {"train": 36, "val": 4, "test": 10}  # test carved: digits has no test split
    for split in ("train", "val", "test"):
        files = sorted((tmp_path / "sd" / split).glob("*.parquet"))
        md = pq.read_schema(files[0]).metadata
        assert json.loads(md[b"dgm.channel_class_names"]) == [str(i) for i in range(10)]
        assert json.loads(md[b"dgm.class_names"]) == [f"{m:03d}" for m in range(1000)]
        assert md[b"dgm.channels"] == b"3"
        meta = read_meta(tmp_path / "sd" / split)
        assert meta.stacked is True
        assert meta.name == "stacked-digits" and meta.shape_chw == (3, 8, 8)
        assert meta.channel_class_names == tuple(str(i) for i in range(10))
    train = read_split(tmp_path / "sd", "train")
    assert train.images.shape == (36, 8, 8, 3)
    assert train.labels.min() >= 0 and train.labels.max() < 1000
    assert row_keys(train.images, train.labels) <= row_keys(stacked_raw.train_images,
                                                           stacked_raw.train_labels)


def test_non_stacked_meta_has_no_channel_class_names(digits_dir):
    for split in ("train", "val", "test"):
        files = sorted((digits_dir / split).glob("*.parquet"))
        assert b"dgm.channel_class_names" not in pq.read_schema(files[0]).metadata
        meta = read_meta(digits_dir / split)
        assert meta.stacked is False and meta.channel_class_names == ()
    assert tiny_meta().stacked is False
    assert b"dgm.channel_class_names" not in tiny_meta().to_metadata()


def test_stacked_meta_metadata_round_trip():
    meta = DatasetMeta("stacked-x", 8, 8, 3, tuple(f"{m:02d}" for m in range(16)), {"f": "a"},
                       ("a", "b", "c", "d"))
    assert meta.stacked
    md = meta.to_metadata()
    assert json.loads(md[b"dgm.channel_class_names"]) == ["a", "b", "c", "d"]
    assert DatasetMeta.from_metadata(md, "src") == meta
