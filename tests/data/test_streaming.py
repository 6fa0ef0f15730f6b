"""Ray Data ingest without a Ray Train run: batches decoded like the in-memory path, the
dataset copied to storage once per content, the auto choice (the streamed training runs are
in tests/training/test_ray_train.py and on the isolated nodes)."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
import torch

from dgm.cluster import directory_digest
from dgm.data.loading import load_split_tensors
from dgm.data.parquet import read_meta
from dgm.data.streaming import COMPLETE, STREAM_MIN_BYTES, ImageBatches, stream_dataset
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


def test_auto_streams_large_datasets_when_the_cluster_has_storage(digits_dir, tmp_path):
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
    assert stream_dataset(big, None, "d").splits == ("train",)
    (big / "val").mkdir()
    with open(big / "val" / "part-00000.parquet", "wb") as fh:
        fh.truncate(STREAM_MIN_BYTES)
    assert stream_dataset(big, None, "d").splits == ("train", "val")
