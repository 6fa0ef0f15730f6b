"""DVC stage `register@MODEL`: a new registered version of the trained generator; the
``champion`` alias moves only if the gating metric improves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgm.config import Params
from dgm.errors import DgmError
from dgm.evaluation.metrics import metric_mode
from dgm.stages.layout import layout, read_json, write_json
from dgm.tracking.lineage import lineage_tags_for_version
from dgm.tracking.names import model_name as registered_name
from dgm.tracking.registry import register_generator


def run(params: Params, model_name: str, root: Path | None = None) -> dict[str, Any]:
    """Register the trained generator; move ``champion`` only if it beats the incumbent."""
    lay = layout(params, root)
    run_record = read_json(lay.model_dir(model_name) / "run.json", "training record")
    metrics = read_json(lay.eval_dir(model_name) / "metrics.json", "evaluation metrics")
    cfg = params.register_
    if cfg.metric not in metrics:
        raise DgmError(f"register.metric {cfg.metric!r} is not among the evaluation metrics "
                       f"({', '.join(sorted(metrics))})")
    decision = register_generator(
        run_record["model_uri"], registered_name(params.data.name, model_name), cfg.metric,
        float(metrics[cfg.metric]), cfg.mode or metric_mode(cfg.metric), cfg.min_delta,
        tags=lineage_tags_for_version(run_record["run_id"]),
    )
    print(decision.message)
    write_json(decision.to_dict(), lay.registry_file(model_name))
    return decision.to_dict()
