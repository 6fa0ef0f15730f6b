"""Ray Data ingest without a Ray Train run: batches decoded like the in-memory path, the
dataset copied to storage once per content, the auto choice (the streamed training runs are
in tests/training/test_ray_train.py and on the isolated nodes)."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
import torch

from dgm.cluster import directory_digest
from dgm.data import streaming
from dgm.data.loading import load_split_tensors
from dgm.data.parquet import read_meta
from dgm.data.streaming import (
    COMPLETE,
    STREAM_MIN_BYTES,
    ImageBatches,
    shuffled_batches,
    split_bytes,
    stream_dataset,
    train_file_order,
)
from dgm.errors import DgmError
from dgm.training.ray_train import resolve_ingest


def test_an_arrow_batch_decodes_to_the_tensors_of_the_in_memory_path(digits_dir):
    table = pq.read_table(digits_dir / "val")
    images, labels = ImageBatches(read_meta(digits_dir / "val"))(table.slice(10, 64))
    expected = load_split_tensors(digits_dir, "val")
    assert images.shape == (64, 1, 8, 8) and images.dtype == torch.float32
    assert torch.equal(images, expected.tensors[0][10:74])
    assert torch.equal(labels, expected.tensors[1][10:74])


def test_the_dataset_is_copied_once_per_content_and_read_in_place_without_storage(
        digits_dir, tmp_path):
    digest = directory_digest(digits_dir)
    assert digest == directory_digest(digits_dir)  # by content: stable
    local = stream_dataset(digits_dir, None, digest)
    assert local.location == str(digits_dir.resolve()) and local.meta.shape_chw == (1, 8, 8)
    streamed = stream_dataset(digits_dir, str(tmp_path / "store"), digest)
    copy = tmp_path / "store" / "datasets" / digest
    assert streamed.location == str(copy) and (copy / COMPLETE).is_file()
    assert pq.read_table(copy / "train").equals(pq.read_table(digits_dir / "train"))
    # an incomplete copy (no marker: a copy cut short) is made again
    (copy / COMPLETE).unlink()
    (copy / "train" / "part-00000.parquet").write_bytes(b"cut short")
    stream_dataset(digits_dir, str(tmp_path / "store"), digest)
    assert pq.read_table(copy / "train").equals(pq.read_table(digits_dir / "train"))


def test_a_storage_that_cannot_be_written_is_one_line(digits_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DgmError, match=r"^cannot copy the dataset to .*file/datasets/x: "):
        stream_dataset(digits_dir, str(blocker), "x")


def test_auto_streams_large_datasets_when_the_cluster_has_storage(digits_dir, tmp_path,
                                                                  monkeypatch):
    assert resolve_ingest("auto", None, digits_dir) == "memory"
    assert resolve_ingest("auto", "s3://b/x", digits_dir) == "memory"  # digits is small
    big = tmp_path / "big"
    (big / "train").mkdir(parents=True)
    shutil.copy(next((digits_dir / "train").glob("*.parquet")), big / "train" / "part-0.parquet")
    with open(big / "train" / "part-1.parquet", "wb") as fh:
        fh.truncate(STREAM_MIN_BYTES)  # sparse: the size counts
    assert resolve_ingest("auto", "s3://b/x", big) == "stream"
    assert resolve_ingest("auto", None, big) == "memory"
    assert resolve_ingest("stream", None, digits_dir) == "stream"
    assert resolve_ingest("memory", "s3://b/x", big) == "memory"
    # a large val split streams too (a small one travels whole: tests/training)
    assert stream_dataset(digits_dir, None, "d").splits == ("train",)
    monkeypatch.setattr(streaming, "STREAM_MIN_BYTES", split_bytes(digits_dir / "val"))
    data = stream_dataset(digits_dir, None, "d")
    assert data.splits == ("train", "val")
    assert sum(data.rows[1].values()) == pq.read_table(digits_dir / "val").num_rows


def test_shuffled_batches_cover_every_row_once_in_full_batches_by_seed():
    rows = torch.arange(1000, dtype=torch.uint8).reshape(-1, 1, 1, 1).repeat(1, 2, 2, 1)
    labels = torch.arange(1000)
    chunks = [(rows[a:b], labels[a:b]) for a, b in ((0, 300), (300, 310), (310, 1000))]

    def run(seed):
        return list(shuffled_batches(chunks, 64, torch.Generator().manual_seed(seed)))

    batches = run(0)
    assert [len(x) for x, _ in batches] == [64] * (1000 // 64)  # the last 40 rows dropped
    seen = torch.cat([y for _, y in batches])
    assert len(set(seen.tolist())) == len(seen) == 960  # no row twice
    images = torch.cat([x for x, _ in batches])
    assert images.shape == (960, 1, 2, 2) and images.dtype == torch.float32
    assert torch.equal(images[:, 0, 0, 0], (seen % 256).float() / 255)  # rows stay paired
    assert all(torch.equal(y, z) for (_, y), (_, z) in zip(batches, run(0), strict=True))
    assert not torch.equal(seen, torch.cat([y for _, y in run(1)]))
    # rows left over by a chunk are shuffled into the next: the first chunk's 300 rows
    # reach beyond the first 4 batches (256 rows)
    assert (torch.cat([y for _, y in batches[4:]]) < 300).any()


def test_the_train_stream_holds_every_file_once_per_epoch_in_a_seeded_order(digits_dir):
    digits = stream_dataset(digits_dir, None, "d")
    assert digits.train_rows == pq.read_table(digits_dir / "train").num_rows
    names = tuple(f"part-{i:05d}.parquet" for i in range(6))
    order = train_file_order(names, epochs=3, seed=0)
    assert order == train_file_order(names, epochs=3, seed=0) != train_file_order(names, 3, 1)
    epochs = [order[i:i + 6] for i in range(0, 18, 6)]
    assert all(sorted(e) == list(names) for e in epochs) and epochs[0] != epochs[1]
