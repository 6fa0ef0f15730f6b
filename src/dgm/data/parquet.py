"""The Parquet layout of image datasets.

``<root>/<split>/part-NNNNN.parquet`` for split in train/val/test, one row per image:

- ``image``: ``fixed_size_binary[H*W*C]``, uint8 pixels in H×W×C (row-major) order;
- ``label``: ``int64``, nullable (null for unlabelled images);
- generated samples add ``seed`` (``int64``);
- images from a folder add ``path`` (``string``): the source file, relative to the folder.

Schema metadata (``dgm.*`` keys): dataset name, height, width, channels, class names (JSON),
the raw files' checksums (JSON) and, for stacked datasets, the class names of one channel
(``dgm.channel_class_names``; the label is then the mode Σ_c y_c·K^(C-1-c)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dgm.data.sources import RawDataset
from dgm.errors import DgmError
from dgm.paths import atomic_path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetMeta:
    """What a Parquet file says about its images."""

    name: str
    height: int
    width: int
    channels: int
    class_names: tuple[str, ...] = ()
    checksums: dict[str, str] = field(default_factory=dict)
    channel_class_names: tuple[str, ...] = ()

    @property
    def stacked(self) -> bool:
        """Each channel is an independent labelled image (Stacked MNIST)."""
        return bool(self.channel_class_names)

    @property
    def image_bytes(self) -> int:
        return self.height * self.width * self.channels

    @property
    def shape_chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_metadata(self) -> dict[bytes, bytes]:
        return {
            b"dgm.dataset": self.name.encode(),
            b"dgm.height": str(self.height).encode(),
            b"dgm.width": str(self.width).encode(),
            b"dgm.channels": str(self.channels).encode(),
            b"dgm.class_names": json.dumps(list(self.class_names)).encode(),
            b"dgm.checksums": json.dumps(self.checksums, sort_keys=True).encode(),
            **({b"dgm.channel_class_names": json.dumps(list(self.channel_class_names)).encode()}
               if self.channel_class_names else {}),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[bytes, bytes] | None, source: str) -> DatasetMeta:
        md = metadata or {}
        try:
            return cls(
                name=md[b"dgm.dataset"].decode(),
                height=int(md[b"dgm.height"]),
                width=int(md[b"dgm.width"]),
                channels=int(md[b"dgm.channels"]),
                class_names=tuple(json.loads(md.get(b"dgm.class_names", b"[]"))),
                checksums=json.loads(md.get(b"dgm.checksums", b"{}")),
                channel_class_names=tuple(json.loads(md.get(b"dgm.channel_class_names",
                                                            b"[]"))),
            )
        except (KeyError, ValueError):
            raise DgmError(f"{source}: not a dgm image Parquet file (no dgm.* metadata)") from None


@dataclass
class ImageSet:
    """Images uint8 (N, H, W, C) and labels int64 (N,), -1 where the label is null."""

    images: np.ndarray
    labels: np.ndarray
    meta: DatasetMeta


def schema(meta: DatasetMeta, with_seed: bool = False, with_path: bool = False) -> pa.Schema:
    fields = [
        pa.field("image", pa.binary(meta.image_bytes), nullable=False),
        pa.field("label", pa.int64(), nullable=True),
    ]
    if with_seed:
        fields.append(pa.field("seed", pa.int64(), nullable=False))
    if with_path:
        fields.append(pa.field("path", pa.string(), nullable=False))
    return pa.schema(fields, metadata=meta.to_metadata())


def images_to_table(
    images: np.ndarray, labels: np.ndarray | None, meta: DatasetMeta, seed: int | None = None,
    paths: list[str] | None = None,
) -> pa.Table:
    """Build a table of the layout above from uint8 (N, H, W, C) images; no per-row Python."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n = images.shape[0]
    if images.shape[1:] != (meta.height, meta.width, meta.channels):
        raise DgmError(f"images of shape {images.shape[1:]} do not match {meta.name}")
    image_col = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(meta.image_bytes), n, [None, pa.py_buffer(images.reshape(-1))]
    )
    if labels is None:
        label_col = pa.nulls(n, pa.int64())
    else:
        labels = np.asarray(labels, dtype=np.int64)
        label_col = pa.array(labels, mask=labels < 0)
    columns = [image_col, label_col]
    if seed is not None:
        columns.append(pa.array(np.full(n, seed, dtype=np.int64)))
    if paths is not None:
        columns.append(pa.array(paths, pa.string()))
    return pa.Table.from_arrays(columns, schema=schema(meta, with_seed=seed is not None,
                                                       with_path=paths is not None))


def decode_table(table: pa.Table, meta: DatasetMeta) -> ImageSet:
    """Images and labels of a table as NumPy arrays, zero-copy where Arrow allows."""
    col = table.column("image").combine_chunks() if table.num_rows else None
    n = table.num_rows
    if col is None:
        images = np.empty((0, meta.height, meta.width, meta.channels), np.uint8)
    else:
        if col.null_count:
            raise DgmError(f"{meta.name}: null images in Parquet data")
        width = meta.image_bytes
        if not pa.types.is_fixed_size_binary(col.type) or col.type.byte_width != width:
            raise DgmError(f"{meta.name}: image column of type {col.type}, but "
                           f"{meta.height}x{meta.width}x{meta.channels} images are "
                           f"fixed_size_binary[{width}]")
        buf = col.buffers()[1]
        flat = np.frombuffer(buf, dtype=np.uint8, count=n * width, offset=col.offset * width)
        images = flat.reshape(n, meta.height, meta.width, meta.channels)
    labels = table.column("label").to_numpy(zero_copy_only=False)
    labels = np.where(np.isnan(labels), -1, labels) if labels.dtype.kind == "f" else labels
    return ImageSet(images=images, labels=labels.astype(np.int64), meta=meta)


def split_indices(
    n: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically carve ``fraction`` of ``range(n)``: (kept, carved), each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    n_carved = max(1, int(round(n * fraction)))
    return np.sort(order[n_carved:]), np.sort(order[:n_carved])


def write_dataset(
    raw: RawDataset,
    out: str | Path,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    shard_rows: int,
) -> dict[str, int]:
    """Write train/val/test Parquet shards of ``raw`` under ``out``; return rows per split.

    The test split is the dataset's own when it has one, else carved with ``seed``; val is
    carved from train with ``seed``. The whole directory appears atomically.
    """
    height, width, channels = raw.train_images.shape[1:]
    meta = DatasetMeta(raw.name, height, width, channels, tuple(raw.class_names), raw.checksums,
                       tuple(raw.channel_class_names))
    images, labels = raw.train_images, raw.train_labels
    paths = None if raw.train_paths is None else np.asarray(raw.train_paths, dtype=object)
    test_paths = None
    if raw.test_images is None:
        keep, test = split_indices(len(images), test_fraction, seed)
        test_images, test_labels = images[test], labels[test]
        images, labels = images[keep], labels[keep]
        if paths is not None:
            paths, test_paths = paths[keep], paths[test]
    else:
        test_images, test_labels = raw.test_images, raw.test_labels
    keep, val = split_indices(len(images), val_fraction, seed + 1)
    if len(keep) < 1:
        raise DgmError(f"{raw.name}: {len(raw.train_images)} image(s) are too few for "
                       "train, val and test splits")
    splits = {
        "train": (images[keep], labels[keep], None if paths is None else paths[keep]),
        "val": (images[val], labels[val], None if paths is None else paths[val]),
        "test": (test_images, test_labels, test_paths),
    }
    with atomic_path(out) as tmp:
        for split, (imgs, labs, names) in splits.items():
            (tmp / split).mkdir(parents=True)
            for shard, start in enumerate(range(0, len(imgs), shard_rows)):
                rows = slice(start, start + shard_rows)
                table = images_to_table(imgs[rows], labs[rows], meta,
                                        paths=None if names is None else list(names[rows]))
                pq.write_table(table, tmp / split / f"part-{shard:05d}.parquet")
    return {split: len(imgs) for split, (imgs, _, _) in splits.items()}


def read_meta(path: str | Path) -> DatasetMeta:
    """Dataset metadata of a Parquet file or of the first shard under a directory."""
    files = parquet_files(path)
    if not files or not files[0].is_file():
        raise DgmError(f"no Parquet data at {path}")
    return DatasetMeta.from_metadata(pq.read_schema(files[0]).metadata, str(files[0]))


def parquet_files(path: str | Path) -> list[Path]:
    """A Parquet file, or the shards under a directory (sorted)."""
    path = Path(path)
    return sorted(path.rglob("*.parquet")) if path.is_dir() else [path]


def count_rows(path: str | Path) -> int:
    """Rows of a Parquet file or of every shard under a directory, from the footers."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))


def read_images(path: str | Path) -> ImageSet:
    """All images of a Parquet file or a directory of shards."""
    path = Path(path)
    meta = read_meta(path)
    table = pq.read_table(path, columns=["image", "label"])
    return decode_table(table, meta)


def read_split(root: str | Path, split: str) -> ImageSet:
    """The images of one split of a prepared dataset."""
    if split not in SPLITS:
        raise DgmError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    return read_images(Path(root) / split)
