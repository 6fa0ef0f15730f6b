"""DVC stage `generate@MODEL`: pull models:/dgm-<dataset>-<model>@champion and sample."""

import sys

from dgm.cli import main
from dgm.config import load_params
from dgm.workflow import layout

model = sys.argv[1]
params = load_params("configs/params.yaml")
cfg = params.generate
main([
    "generate", "--model-uri", f"models:/dgm-{params.data.name}-{model}@champion",
    "--num-samples", str(cfg.num_samples), "--batch-size", str(cfg.batch_size),
    "--seed", str(cfg.seed), "--shard-size", str(cfg.shard_size), "--workers", str(cfg.workers),
    "--output", str(layout(params).samples_file(model)),  # a directory of Parquet shards
])
