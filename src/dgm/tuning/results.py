"""The `tune` stage's outputs: the best config, the results table and the trial curves.

``best.yaml``::

    model: gan            # the key of `models`
    tuned: true           # false: the model is not in tune.models (train uses its params)
    params: {lr_g: 0.0004, loss: hinge}   # applied over models.<model> by `train`
    metric: val_fid       # what trials reported each epoch (mode: min | max)
    score: 41.2           # the best trial's last value
    study, trial_id, run_id, parent_run_id

``results.parquet`` — one row per trial: ``trial_id``, ``status`` (TERMINATED | ERROR),
``epochs``, ``score_last``, ``score_best``, ``run_id``, ``run_status`` (the MLflow child run:
FINISHED, KILLED when the scheduler stopped it, FAILED), ``node_id``, ``attempts``, ``error``
and one ``config.<hyperparameter>`` column each. ``curves.csv`` — ``trial,epoch,score``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dgm.paths import atomic_path

BEST_FILE, RESULTS_FILE, CURVES_FILE = "best.yaml", "results.parquet", "curves.csv"
BASE_SCHEMA = pa.schema([
    ("trial_id", pa.string()), ("status", pa.string()), ("epochs", pa.int64()),
    ("score_last", pa.float64()), ("score_best", pa.float64()), ("run_id", pa.string()),
    ("run_status", pa.string()), ("node_id", pa.string()), ("attempts", pa.int64()),
    ("error", pa.string()),
])


def _plain(value: Any) -> Any:
    """numpy scalars → Python (YAML-safe)."""
    return value.item() if hasattr(value, "item") else value


def write_best(record: dict[str, Any], out: Path) -> Path:
    with atomic_path(out / BEST_FILE) as tmp:
        tmp.write_text(yaml.safe_dump(record, sort_keys=False))
    return out / BEST_FILE


def write_results(trials: list[dict[str, Any]], out: Path) -> Path:
    table = (pa.Table.from_pylist(trials) if trials
             else BASE_SCHEMA.empty_table())
    with atomic_path(out / RESULTS_FILE) as tmp:
        pq.write_table(table, tmp)
    return out / RESULTS_FILE


def write_curves(curves: list[dict[str, Any]], out: Path) -> Path:
    with atomic_path(out / CURVES_FILE) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["trial", "epoch", "score"])
        writer.writeheader()
        writer.writerows(curves)
    return out / CURVES_FILE


def write_untuned(out: Path, model: str) -> None:
    """Outputs of a model the study does not search: ``tuned: false``, no trials."""
    write_best({"model": model, "tuned": False, "params": {}}, out)
    write_results([], out)
    write_curves([], out)


def write_study(result, out: Path, model: str, family: str, uri: str) -> dict[str, Any]:
    """Write the outputs of a finished study, log them to its MLflow parent run, tag the
    best trial's child run, end the parent run; return the ``best.yaml`` record."""
    from dgm.tracking.mlflow_runs import RunLogger

    best = result.best
    record = {"model": model, "family": family, "tuned": True,
              "params": {k: _plain(v) for k, v in best["config"].items()},
              "metric": result.key, "mode": result.mode, "score": float(best["score"]),
              "study": result.study, "trial_id": best["trial_id"], "run_id": best["run_id"],
              "parent_run_id": result.parent_run_id}
    write_best(record, out)
    write_results(result.trials, out)
    write_curves(result.curves, out)
    parent = RunLogger(result.parent_run_id, uri)
    for name in (BEST_FILE, RESULTS_FILE, CURVES_FILE):
        parent.log_file(out / name, "study")
    _log_curves_png(parent, result.curves, result.key)
    finished = [t for t in result.trials if not math.isnan(t["score_last"])]
    parent.log_metrics({f"best_{result.key}": record["score"], "trials": len(result.trials),
                        "trials_finished": len(finished)})
    parent.set_tags({"dgm.best_trial_id": best["trial_id"], "dgm.best_run_id": best["run_id"]})
    if best["run_id"]:
        RunLogger(best["run_id"], uri).set_tags({"dgm.best_trial": "true"})
    parent.end("FINISHED")
    return record


def _log_curves_png(logger, curves: list[dict[str, Any]], key: str) -> None:
    """One line per trial: the val metric by epoch (the parent run's ``study/curves.png``)."""
    series = {}
    for trial in dict.fromkeys(row["trial"] for row in curves):
        rows = [r for r in curves if r["trial"] == trial]
        series[trial] = ([r["epoch"] for r in rows], [r["score"] for r in rows])
    logger.log_lines(series, "study/curves.png", "epoch", key, marker="o", legend_fontsize=6)


def tuned_config(model_config, best_file: Path, model_name: str, quiet: bool = False,
                 keep: Collection[str] = ()):
    """``model_config`` with the best params of ``best_file`` (the `tune` stage's
    ``best.yaml``) applied when it tuned the model, except the keys in ``keep`` (values the
    user set explicitly, which win); one line says what was applied and what was kept.
    Returns (config, the record (with the ``kept`` keys, if any) or None)."""
    from dgm.errors import DgmError
    from dgm.tuning.space import apply_overrides

    if not best_file.is_file():
        return model_config, None
    record = yaml.safe_load(best_file.read_text()) or {}
    if not record.get("tuned"):
        return model_config, None
    tuned = record.get("params") or {}
    applied = {k: v for k, v in tuned.items() if k not in keep}
    kept = {k: getattr(model_config, k, None) for k in tuned if k in keep}
    replaced = {k: getattr(model_config, k, None) for k in applied}
    try:
        model_config = apply_overrides(model_config, applied)
    except DgmError as exc:
        raise DgmError(f"{best_file}: the tuned params do not fit models.{model_name}: {exc}"
                       ) from None
    if not quiet:
        line = (f"{model_name}: tuned params from {best_file.name} ({record.get('study')}) "
                "win over the params file's: " + (", ".join(
                    f"{k}={v}" + (f" (params: {replaced[k]})" if replaced[k] != v else "")
                    for k, v in applied.items()) or "none applied"))
        if kept:
            line += "; your --params value wins for " + ", ".join(
                f"{k}={v} (tuned: {tuned[k]})" for k, v in kept.items())
        print(line)
    return model_config, ({**record, "kept": sorted(kept)} if kept else record)
