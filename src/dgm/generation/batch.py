"""``models:/NAME@alias`` → a directory of Parquet shards (the prepare schema plus ``seed``)
and a PNG grid beside it; with ``workers > 1`` the shards are spread over Ray actors.

Shard ``k`` holds samples ``k·shard_size …``; its batch ``b`` is drawn with
``batch_seed(shard_seed(seed, k), b)``, so a shard depends only on
``(seed, k, shard_size, batch_size)``, never on the number of workers or shards.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from dgm.data.parquet import DatasetMeta, images_to_table, schema
from dgm.errors import DgmError
from dgm.images import save_grid
from dgm.models.generator import batch_seed
from dgm.paths import atomic_path, sole_writer

GRID_IMAGES = 64
SHARD_SIZE = 50_000


@dataclass
class GenerationResult:
    output: Path
    grid: Path
    num_samples: int
    shards: int
    seconds: float  # streaming, once the model copies are loaded

    @property
    def samples_per_s(self) -> float:
        return self.num_samples / max(self.seconds, 1e-9)


def grid_path(output: Path) -> Path:
    """The PNG grid beside a ``.parquet`` output (never the output itself)."""
    return output.with_suffix(".png") if output.suffix != ".png" else output.with_suffix(
        ".grid.png")


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``; its batch ``b`` uses ``batch_seed(shard_seed(…), b)``."""
    return batch_seed(seed, shard)


def shard_name(shard: int, num_shards: int) -> str:
    """``part-00007.parquet``: zero-padded so that name order is shard order."""
    return f"part-{shard:0{max(5, len(str(num_shards - 1)))}d}.parquet"


def shard_counts(num_samples: int, shard_size: int) -> list[int]:
    """Samples per shard: ``shard_size`` each, the last one shorter."""
    return [min(shard_size, num_samples - start) for start in range(0, num_samples, shard_size)]


class ShardWriter:
    """One model copy writing whole shards, one batch in memory at a time.

    ``load`` is separate from ``__init__`` so that, in a Ray actor, its errors reach the
    driver as task errors (a failing actor constructor loses the exception type).
    """

    def __init__(self, model_uri: str, seed: int, batch_size: int, num_shards: int,
                 label: int | None = None, model_files=None) -> None:
        self.model_uri, self.seed, self.batch_size = model_uri, seed, batch_size
        self.num_shards, self.label, self.model_files = num_shards, label, model_files

    def load(self) -> None:
        """Load the model: from MLflow in-process, from its shipped files in a Ray actor
        (``model_files``: the actor's node may not reach the store)."""
        from dgm.tracking.pyfunc import load_generator_model

        source = self.model_uri
        if self.model_files is not None:
            from dgm.cluster import check_code_version, materialize

            check_code_version(self.model_files[1], "a generation actor")
            source = str(materialize(self.model_files[0]))
        self.generator = load_generator_model(source)
        self.generator.check_label(self.label)
        channels, height, width = self.generator.image_shape
        extra = self.generator.extra
        self.meta = DatasetMeta(
            name=str(extra.get("dataset", "generated")), height=height, width=width,
            channels=channels, class_names=tuple(extra.get("class_names", ())),
            checksums=dict(extra.get("checksums", {})),
        )

    def write(self, directory: Path | None, shard: int, count: int,
              on_batch: Callable[[int], None] | None = None
              ) -> tuple[int, np.ndarray | None, bytes | None]:
        """Write shard ``shard`` (``count`` samples) into ``directory`` (None: into bytes,
        returned: a Ray actor streams its shards back to the driver); return ``count``,
        for shard 0 its first :data:`GRID_IMAGES` images, and the bytes."""
        head: np.ndarray | None = None
        seed = shard_seed(self.seed, shard)
        sink = (pa.BufferOutputStream() if directory is None
                else Path(directory) / shard_name(shard, self.num_shards))
        with pq.ParquetWriter(sink, schema(self.meta, with_seed=True)) as writer:
            for index, start in enumerate(range(0, count, self.batch_size)):
                n = min(self.batch_size, count - start)
                images = self.generator.predict(n, batch_seed(seed, index), self.label)
                if shard == 0 and start < GRID_IMAGES:
                    first = images[:GRID_IMAGES - start].copy()
                    head = first if head is None else np.concatenate([head, first])
                labels = None if self.label is None else np.full(n, self.label)
                writer.write_table(images_to_table(images, labels, self.meta, seed=self.seed))
                if on_batch is not None:
                    on_batch(n)
        data = sink.getvalue().to_pybytes() if directory is None else None
        return count, head, data


def _check(num_samples: int, output: Path, batch_size: int, shard_size: int,
           workers: int) -> None:
    for flag, value in [("--num-samples", num_samples), ("--batch-size", batch_size),
                        ("--shard-size", shard_size), ("--workers", workers)]:
        if value <= 0:
            raise DgmError(f"{flag} must be positive, got {value}")
    if output.suffix != ".parquet":
        raise DgmError(f"--output must end in .parquet (a directory of shards), got {output}")


@contextlib.contextmanager
def _actors(workers: int, writer_args: dict) -> Iterator[list]:
    """``workers`` loaded Ray actors (one CPU, and one GPU each when the cluster has one per
    worker), ended on exit; errors of loading surface as their :class:`DgmError`."""
    import ray

    from dgm.cluster import decide_use_gpu

    gpus = 1 if decide_use_gpu("auto", workers) else 0
    remote = ray.remote(ShardWriter).options(num_cpus=1, num_gpus=gpus)
    actors = [remote.remote(**writer_args) for _ in range(workers)]
    try:
        with _ray_errors():
            ray.get([actor.load.remote() for actor in actors])
        yield actors
    finally:  # graceful: a forced kill of an actor already gone logs GCS errors to drivers
        for actor in actors:
            actor.__ray_terminate__.remote()


@contextlib.contextmanager
def _ray_errors() -> Iterator[None]:
    """Re-raise a Ray task's :class:`DgmError` as itself (one line, not a remote traceback)."""
    from ray.exceptions import RayTaskError

    try:
        yield
    except RayTaskError as exc:
        if isinstance(exc.cause, DgmError):
            raise DgmError(str(exc.cause)) from None
        raise


def generate(
    model_uri: str, num_samples: int, output: str | Path, seed: int, batch_size: int = 1000,
    progress: bool = True, shard_size: int = SHARD_SIZE, workers: int = 1,
    label: int | None = None,
) -> GenerationResult:
    """Stream ``num_samples`` images from ``model_uri`` into ``output``/part-*.parquet.

    ``workers == 1`` runs in-process; more use as many Ray actors (``ensure_ray``: joins
    ``RAY_ADDRESS``), on any node: the model's files are shipped to them and their shards
    stream back to this process, byte-identical to one worker's. ``label``: the class every
    image of a conditional model shows (None: classes drawn by the seed). The directory
    appears only when complete; a second ``generate`` to the same output while this one
    runs is refused (its shards and grid would mix with these).
    """
    output = Path(output)
    _check(num_samples, output, batch_size, shard_size, workers)
    with sole_writer(output):
        return _generate(model_uri, num_samples, output, seed, batch_size, progress,
                         shard_size, workers, label)


def _generate(model_uri: str, num_samples: int, output: Path, seed: int, batch_size: int,
              progress: bool, shard_size: int, workers: int,
              label: int | None) -> GenerationResult:
    from dgm.tracking.mlflow_runs import tracking_uri
    from dgm.tracking.registry import resolve_model_uri

    counts = shard_counts(num_samples, shard_size)
    args = {"model_uri": model_uri, "seed": seed, "batch_size": batch_size,
            "num_shards": len(counts), "label": label}
    if workers > 1:
        from dgm.cluster import check_resources, ensure_ray

        ensure_ray()
        check_resources(workers=workers, cpus_per_worker=1, what=f"--workers {workers}")
    resolve_model_uri(model_uri, tracking_uri())  # unknown: fails before anything is written
    columns = [TextColumn("generating"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[rate]} samples/s"), TimeRemainingColumn()]
    bar = Progress(*columns, disable=not progress)
    task = bar.add_task("generate", total=num_samples, rate="-")
    started = time.perf_counter()

    def advance(n: int) -> None:
        bar.advance(task, n)
        rate = bar.tasks[0].completed / max(1e-9, time.perf_counter() - started)
        bar.update(task, rate=f"{rate:,.0f}")

    head: np.ndarray | None = None
    # Exits in reverse: the bar stops, the actors are killed, then the temporary directory
    # is renamed onto ``output`` (success) or removed.
    with atomic_path(output) as tmp, contextlib.ExitStack() as stack:
        directory = tmp.absolute()
        directory.mkdir()
        if workers == 1:
            writer = ShardWriter(**args)
            writer.load()
            results = (writer.write(directory, k, n, advance) for k, n in enumerate(counts))
        else:
            from ray.util import ActorPool

            from dgm.cluster import code_version, ship_directory
            from dgm.tracking.pyfunc import download_generator

            # The actors may run on nodes that reach neither the MLflow store nor this disk:
            # the model's files travel to them, and their shards come back as bytes.
            local = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dgm-model-")))
            files = (ship_directory(download_generator(model_uri, local)), code_version())
            actors = stack.enter_context(_actors(workers, {**args, "model_files": files}))
            stack.enter_context(_ray_errors())
            results = ActorPool(actors).map(  # in shard order, computed in parallel
                lambda actor, job: actor.write.remote(None, *job), enumerate(counts))
        stack.enter_context(bar)  # shown once the model is loaded
        started = time.perf_counter()
        for shard, (count, images, data) in enumerate(results):
            head = images if images is not None else head
            if data is not None:  # an actor's shard, streamed back: written here
                (directory / shard_name(shard, len(counts))).write_bytes(data)
            if workers > 1:  # in-process, ``advance`` runs after every batch
                advance(count)
        if output.is_file() or output.is_symlink():
            output.unlink()  # a single-file output of older versions
    assert head is not None
    grid = save_grid(head, grid_path(output), max_images=GRID_IMAGES)
    return GenerationResult(output=output, grid=grid, num_samples=num_samples,
                            shards=len(counts), seconds=time.perf_counter() - started)
