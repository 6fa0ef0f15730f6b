"""``models:/NAME@alias`` → streamed Parquet (the prepare schema plus ``seed``) + PNG grid."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from dgm.data.parquet import DatasetMeta, images_to_table, schema
from dgm.errors import DgmError
from dgm.images import save_grid
from dgm.models.generator import batch_seed
from dgm.paths import atomic_path

GRID_IMAGES = 64


@dataclass
class GenerationResult:
    output: Path
    grid: Path
    num_samples: int


def grid_path(output: Path) -> Path:
    """The PNG grid beside a ``.parquet`` output (never the output itself)."""
    return output.with_suffix(".png") if output.suffix != ".png" else output.with_suffix(
        ".grid.png")


def generate(
    model_uri: str, num_samples: int, output: str | Path, seed: int, batch_size: int = 1000,
    progress: bool = True,
) -> GenerationResult:
    """Stream ``num_samples`` images from ``model_uri`` into one Parquet file, batch by batch.

    Batch ``i`` is drawn with :func:`batch_seed` ``(seed, i)``, so the output is a
    deterministic function of ``(seed, batch_size)``. The file appears only when complete.
    """
    if num_samples <= 0:
        raise DgmError(f"--num-samples must be positive, got {num_samples}")
    if batch_size <= 0:
        raise DgmError(f"--batch-size must be positive, got {batch_size}")
    if Path(output).suffix != ".parquet":
        raise DgmError(f"--output must be a .parquet file, got {output}")
    from dgm.tracking.pyfunc import load_generator_model

    output = Path(output)
    generator = load_generator_model(model_uri)
    channels, height, width = generator.image_shape
    extra = generator.extra
    meta = DatasetMeta(
        name=str(extra.get("dataset", "generated")), height=height, width=width,
        channels=channels, class_names=tuple(extra.get("class_names", ())),
        checksums=dict(extra.get("checksums", {})),
    )
    first: np.ndarray | None = None
    columns = [TextColumn("generating"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[rate]} samples/s"), TimeRemainingColumn()]
    with atomic_path(output) as tmp, Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("generate", total=num_samples, rate="-")
        started = time.perf_counter()
        with pq.ParquetWriter(tmp, schema(meta, with_seed=True)) as writer:
            for index, start in enumerate(range(0, num_samples, batch_size)):
                count = min(batch_size, num_samples - start)
                images = generator.predict(count, batch_seed(seed, index))
                if first is None:
                    first = images[:GRID_IMAGES]
                writer.write_table(images_to_table(images, None, meta, seed=seed))
                done = start + count
                bar.update(task, completed=done,
                           rate=f"{done / max(1e-9, time.perf_counter() - started):,.0f}")
    grid = save_grid(first, grid_path(output), max_images=GRID_IMAGES)
    return GenerationResult(output=output, grid=grid, num_samples=num_samples)
