"""Ray Data ingest: the prepared splits read by Ray Data from where every node sees them
(``cluster.storage``, or the driver's directory on a one-machine Ray), each Ray Train rank
iterating its own shard as tensor batches. No worker holds more of a split than its
streaming blocks and its shuffle buffer, so a dataset need not fit in one worker's memory.

The dataset reaches the storage once per content digest (``datasets/<digest>/`` under the
storage, complete when its ``_COMPLETE`` marker is there; a present copy is reused).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from dgm.data.loading import to_float_tensor
from dgm.data.parquet import DatasetMeta, decode_table, read_meta
from dgm.errors import DgmError
from dgm.storage import filesystem, join

COMPLETE = "_COMPLETE"
# Rows each rank shuffles within while streaming (with the shard files in random order).
SHUFFLE_ROWS = 8192
# `train.ingest: auto` streams datasets from this size on (smaller ones travel whole through
# the object store: Ray Data starts its read tasks again every epoch, seconds on small data).
STREAM_MIN_BYTES = 256 * 2**20
# Parquet read tasks ask for no CPU (at most READ_TASKS at once), so they run beside training
# workers that hold every CPU of their nodes: Ray Data's default of 1 CPU a task would wait
# for those forever.
READ_TASKS = 2


class ImageBatches(ArrowBatchCollateFn):
    """An Arrow batch of the Parquet layout → (images float (N, C, H, W) in [0, 1], labels)."""

    def __init__(self, meta: DatasetMeta) -> None:
        super().__init__()
        self.meta = meta

    def __call__(self, batch: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
        data = decode_table(batch, self.meta)
        return to_float_tensor(data.images), torch.from_numpy(data.labels)


@dataclass(frozen=True)
class StreamedDataset:
    """A prepared dataset as Ray Train reads it: Parquet splits under ``location`` (a URI or a
    path every node sees). A val split below :data:`STREAM_MIN_BYTES` is not streamed (each
    epoch scores it, and every Ray Data pass pays its start-up): it travels whole
    (``small_val``, set by the trainer)."""

    location: str
    splits: tuple[str, ...]  # the streamed ones
    meta: DatasetMeta
    files: tuple[int, ...] = ()  # Parquet files of each streamed split
    small_val: Any = None  # ShippedDirectory of the val split's files, or None

    def datasets(self) -> dict:
        """One Ray Data dataset per split, for ``TorchTrainer(datasets=...)``."""
        import ray.data

        quiet = ray.data.DataContext.get_current()  # captured by the datasets made below
        quiet.enable_progress_bars = False
        quiet.print_on_execution_start = False
        fs, path = filesystem(self.location)
        files = self.files or (READ_TASKS,) * len(self.splits)
        return {split: ray.data.read_parquet(f"{path}/{split}", filesystem=fs, num_cpus=0,
                                             concurrency=max(1, min(READ_TASKS, count)),
                                             shuffle="files" if split == "train" else None)
                for split, count in zip(self.splits, files, strict=True)}


def stream_dataset(dataset_dir: Path, storage: str | None, digest: str) -> StreamedDataset:
    """``dataset_dir`` readable by every node: copied under ``storage`` unless a complete copy
    of the same ``digest`` is there, or read in place when ``storage`` is None (one machine);
    the train split streamed, the val split too when it is large."""
    dataset_dir = Path(dataset_dir)
    val = dataset_dir / "val"
    splits = ("train", "val") if val.is_dir() and split_bytes(val) >= STREAM_MIN_BYTES else (
        "train",)
    meta = read_meta(dataset_dir / "train")
    files = tuple(len(list((dataset_dir / s).glob("*.parquet"))) for s in splits)
    location = str(dataset_dir.resolve())
    if storage is not None:
        location = join(storage, "datasets", digest)
        upload_once(dataset_dir, location)
    return StreamedDataset(location, splits, meta, files)


def split_bytes(directory: Path) -> int:
    """The size of the Parquet files under ``directory``."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*.parquet"))


def upload_once(local: Path, location: str) -> None:
    """Copy the files under ``local`` to ``location`` and mark it complete last; nothing to do
    when a complete copy is there (the name is the content digest)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    try:
        if fs.get_file_info(f"{path}/{COMPLETE}").type == pafs.FileType.File:
            return
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(Path(local).resolve()), path,
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        with fs.open_output_stream(f"{path}/{COMPLETE}") as marker:
            marker.write(b"")
    except OSError as exc:
        raise DgmError(f"cannot copy the dataset to {location}: "
                       f"{str(exc).splitlines()[0]}") from None


@dataclass
class ShardLoader:
    """This rank's shard of one split, one epoch per iteration: (images, labels) batches of
    ``batch_size``, shuffled within :data:`SHUFFLE_ROWS` rows by a seed that changes with the
    epoch (``set_epoch``, as a ``DistributedSampler``). Call inside a Ray Train worker."""

    split: str
    meta: DatasetMeta
    batch_size: int
    shuffle: bool
    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import ray.train

        shard = ray.train.get_dataset_shard(self.split)
        return iter(shard.iter_torch_batches(
            batch_size=self.batch_size, collate_fn=ImageBatches(self.meta),
            drop_last=self.shuffle,
            local_shuffle_buffer_size=SHUFFLE_ROWS if self.shuffle else None,
            local_shuffle_seed=self.seed * 100_003 + self.epoch if self.shuffle else None))
