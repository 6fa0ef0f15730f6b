"""Ray Data ingest: the prepared splits read by Ray Data from where every node sees them
(``cluster.storage``, or the driver's directory on a one-machine Ray), each Ray Train rank
iterating its own shard as tensor batches. No worker holds more of a split than its
streaming blocks and its shuffle chunk, so a dataset need not fit in one worker's memory.

The train split is one Ray Data execution for the whole run: its files, in a seeded random
order per epoch, one epoch after another (:class:`ParquetFiles`, a Ray Data datasource with
one read task per file and epoch), and each rank cuts its stream into epochs of equal
steps. Ray Data starts an execution in seconds; paid every epoch, that start was most of an
epoch of MNIST. ``read_parquet`` cannot do this (it reads a path listed twice once) and it
lists the files in a 1-CPU task, which workers holding every CPU would wait for forever.

The dataset reaches the storage once per content digest (``datasets/<digest>/`` under the
storage, complete when its ``_COMPLETE`` marker is there; a present copy is reused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.collate_fn import ArrowBatchCollateFn

from dgm.data.loading import to_float_tensor
from dgm.data.parquet import DatasetMeta, decode_table, read_meta
from dgm.errors import DgmError
from dgm.storage import filesystem, join

COMPLETE = "_COMPLETE"
# Rows each rank shuffles within while streaming (with the shard files in random order),
# and at most SHUFFLE_BYTES of images.
SHUFFLE_ROWS = 8192
SHUFFLE_BYTES = 64 * 2**20
# `train.ingest: auto` streams datasets from this size on (smaller ones travel whole through
# the object store); a val split streams from this size on (a pass per epoch, each paying
# Ray Data's start of an execution, seconds).
STREAM_MIN_BYTES = 256 * 2**20
# Parquet read tasks ask for no CPU (at most READ_TASKS at once), so they run beside training
# workers that hold every CPU of their nodes: Ray Data's default of 1 CPU a task would wait
# for those forever.
READ_TASKS = 2
# A read task yields blocks of at most this many bytes of images.
BLOCK_BYTES = 64 * 2**20


class ParquetFiles(Datasource):
    """Parquet files under ``location`` (a URI or a path every node sees) as a Ray Data
    datasource: one read task per entry of ``order`` (a file may come back, once per epoch),
    blocks of at most :data:`BLOCK_BYTES` of images."""

    def __init__(self, location: str, order: list[str], rows: dict[str, int],
                 image_bytes: int) -> None:
        self.location, self.order, self.rows = location, order, rows
        self.block_rows = max(1, BLOCK_BYTES // image_bytes)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        fs, root = filesystem(self.location)
        return [ReadTask(partial(read_blocks, fs, f"{root}/{name}", self.block_rows),
                         BlockMetadata(num_rows=self.rows[name], size_bytes=None,
                                       exec_stats=None, input_files=(name,)),
                         per_task_row_limit=per_task_row_limit)
                for name in self.order]


def read_blocks(fs, path: str, rows: int):
    """The Parquet file at ``path`` as Arrow tables of at most ``rows`` rows (a read task)."""
    for batch in pq.ParquetFile(path, filesystem=fs).iter_batches(batch_size=rows,
                                                                  columns=["image", "label"]):
        yield pa.Table.from_batches([batch])


class ImageBatches(ArrowBatchCollateFn):
    """An Arrow batch of the Parquet layout → (images float (N, C, H, W) in [0, 1], labels)."""

    def __init__(self, meta: DatasetMeta, floats: bool = True) -> None:
        super().__init__()
        self.meta = meta
        self.floats = floats  # False: the uint8 (N, H, W, C) images as they are stored

    def __call__(self, batch: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
        data = decode_table(batch, self.meta)
        images = to_float_tensor(data.images) if self.floats else torch.from_numpy(
            data.images.copy())
        return images, torch.from_numpy(data.labels)


@dataclass(frozen=True)
class StreamedDataset:
    """A prepared dataset as Ray Train reads it: Parquet splits under ``location`` (a URI or a
    path every node sees). A val split below :data:`STREAM_MIN_BYTES` is not streamed (each
    epoch scores it, and every Ray Data pass pays its start-up): it travels whole
    (``small_val``, set by the trainer)."""

    location: str
    splits: tuple[str, ...]  # the streamed ones
    meta: DatasetMeta
    rows: tuple[dict[str, int], ...]  # each streamed split's Parquet files (sorted): rows
    small_val: Any = None  # ShippedDirectory of the val split's files, or None

    @property
    def train_rows(self) -> int:
        return sum(self.rows[0].values())

    def datasets(self, epochs: int, seed: int) -> dict:
        """One Ray Data dataset per split, for ``TorchTrainer(datasets=...)``: the train split
        ``epochs`` times over (files in a random order per epoch, by ``seed``), val once."""
        import ray.data

        quiet = ray.data.DataContext.get_current()  # captured by the datasets made below
        quiet.enable_progress_bars = False
        quiet.print_on_execution_start = False
        datasets = {}
        for split, rows in zip(self.splits, self.rows, strict=True):
            names = tuple(rows)
            order = train_file_order(names, epochs, seed) if split == "train" else list(names)
            source = ParquetFiles(join(self.location, split), order, rows,
                                  self.meta.image_bytes)
            datasets[split] = ray.data.read_datasource(
                source, num_cpus=0, concurrency=max(1, min(READ_TASKS, len(names))))
        return datasets


def train_file_order(names: tuple[str, ...], epochs: int, seed: int) -> list[str]:
    """The train stream's files: every file once per epoch, in a random order per epoch (the
    ``seed`` and the epoch decide it)."""
    return [names[i] for epoch in range(1, max(1, epochs) + 1)
            for i in np.random.default_rng(seed * 100_003 + epoch).permutation(len(names))]


def stream_dataset(dataset_dir: Path, storage: str | None, digest: str) -> StreamedDataset:
    """``dataset_dir`` readable by every node: copied under ``storage`` unless a complete copy
    of the same ``digest`` is there, or read in place when ``storage`` is None (one machine);
    the train split streamed, the val split too when it is large."""
    dataset_dir = Path(dataset_dir)
    val = dataset_dir / "val"
    splits = ("train", "val") if val.is_dir() and split_bytes(val) >= STREAM_MIN_BYTES else (
        "train",)
    meta = read_meta(dataset_dir / "train")
    rows = tuple({p.name: pq.ParquetFile(p).metadata.num_rows
                  for p in sorted((dataset_dir / split).glob("*.parquet"))} for split in splits)
    location = str(dataset_dir.resolve())
    if storage is not None:
        location = join(storage, "datasets", digest)
        upload_once(dataset_dir, location)
    return StreamedDataset(location, splits, meta, rows)


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
    """This rank's shard of one split as (images, labels) batches of ``batch_size``, one
    epoch per iteration. Train (``shuffle``): the run's one stream (see the module), cut
    into epochs of ``train_rows // world size`` rows, shuffled within chunks of
    :data:`SHUFFLE_ROWS` rows (at most :data:`SHUFFLE_BYTES`) by ``seed`` and the rank,
    full batches only. Val: a Ray Data pass per epoch, in order. Call inside a Ray Train
    worker."""

    split: str
    meta: DatasetMeta
    batch_size: int
    shuffle: bool
    seed: int
    train_rows: int = 0
    _stream: Any = field(default=None, init=False, repr=False)

    def __iter__(self):
        import ray.train

        shard = ray.train.get_dataset_shard(self.split)
        if not self.shuffle:
            return iter(shard.iter_torch_batches(batch_size=self.batch_size,
                                                 collate_fn=ImageBatches(self.meta)))
        if self._stream is None:
            self._stream = self._shuffled(shard)
        world = ray.train.get_context().get_world_size()
        return islice(self._stream, self.train_rows // world // self.batch_size)

    def chunk_rows(self) -> int:
        """Rows shuffled together: :data:`SHUFFLE_ROWS`, fewer for large images."""
        return max(self.batch_size, min(SHUFFLE_ROWS, SHUFFLE_BYTES // self.meta.image_bytes))

    def _shuffled(self, shard):
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        chunks = shard.iter_torch_batches(batch_size=self.chunk_rows(),
                                          collate_fn=ImageBatches(self.meta, floats=False))
        return shuffled_batches(chunks, self.batch_size,
                                torch.Generator().manual_seed(self.seed * 100_003 + rank))


def shuffled_batches(chunks, batch_size: int, generator: torch.Generator):
    """Float (images, labels) batches of ``batch_size`` from uint8 (N, H, W, C) chunks, each
    chunk (with the rows the last one left over) in a random order; a last partial batch is
    dropped."""
    held_images = held_labels = None
    for images, labels in chunks:
        if held_images is not None:
            images, labels = torch.cat([held_images, images]), torch.cat([held_labels, labels])
        order = torch.randperm(len(images), generator=generator)
        images, labels = images[order], labels[order]
        full = len(images) - len(images) % batch_size
        for start in range(0, full, batch_size):
            yield (to_float_tensor(images[start:start + batch_size].numpy()),
                   labels[start:start + batch_size])
        held_images, held_labels = images[full:], labels[full:]
