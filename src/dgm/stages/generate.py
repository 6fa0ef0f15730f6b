"""DVC stage `generate@MODEL`: pull ``models:/dgm-<dataset>-<model>@champion`` and stream
``generate.num_samples`` images into Parquet shards and a PNG grid."""

from __future__ import annotations

from pathlib import Path

from dgm.config import Params
from dgm.generation.batch import GenerationResult, generate
from dgm.stages.layout import layout
from dgm.tracking.names import model_name as registered_name
from dgm.tracking.registry import CHAMPION


def run(params: Params, model_name: str, root: Path | None = None) -> GenerationResult:
    """Generate from the model's champion into ``artifacts/samples/<dataset>/<model>.parquet``."""
    cfg = params.generate
    uri = f"models:/{registered_name(params.data.name, model_name)}@{CHAMPION}"
    result = generate(uri, cfg.num_samples, layout(params, root).samples_file(model_name),
                      cfg.seed, cfg.batch_size, shard_size=cfg.shard_size, workers=cfg.workers)
    print(summary(result))
    return result


def summary(result: GenerationResult) -> str:
    """The one line ``dgm generate`` prints."""
    return (f"wrote {result.num_samples} samples ({result.shards} shard(s)) to {result.output} "
            f"({result.samples_per_s:,.0f} samples/s; grid: {result.grid})")
