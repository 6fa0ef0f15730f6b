"""DVC stage `evaluator`: train the domain classifier that judges every model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgm.config import Params
from dgm.data.parquet import SPLITS, read_split
from dgm.evaluation.classifier import save_classifier
from dgm.evaluation.fitting import evaluator_version, fit_evaluator
from dgm.evaluation.reference import REFERENCE_FILE, save_reference
from dgm.stages.layout import layout, write_json
from dgm.tracking.mlflow_runs import RunLogger, start_run, tracking_uri
from dgm.tracking.names import experiment_name

CLASSIFIER_FILE = "classifier.pt"


def run(params: Params, root: Path | None = None) -> dict[str, Any]:
    """Train the evaluator on the real train split (a classifier, or the label-free
    autoencoder for unlabelled data); write ``classifier.pt``, its reference
    and ``metrics.json`` (test accuracy, the floor of each quality metric); log the run."""
    lay = layout(params, root)
    splits = {s: read_split(lay.data_dir, s) for s in SPLITS}
    version = evaluator_version(params.data.name, params.evaluator,
                                params.data.model_dump_json(), splits["train"].meta.checksums)
    fitted = fit_evaluator(splits, params.evaluator, params.evaluate, version)
    out = lay.evaluator_dir
    save_classifier(fitted.model, out / CLASSIFIER_FILE, version=version)
    save_reference(fitted.reference, fitted.info, out / REFERENCE_FILE)
    write_json(fitted.metrics, out / "metrics.json")

    uri = tracking_uri(lay.root)
    run_id = start_run(experiment_name(params.data.name), "evaluator",
                       {"evaluator": params.evaluator.model_dump(),
                        "data": params.data.model_dump()},
                       {"dgm.stage": "evaluator", "dgm.dataset": params.data.name}, uri=uri)
    logger = RunLogger(run_id, uri)
    logger.log_metrics({k: float(v) for k, v in fitted.metrics.items()})
    logger.log_file(out / CLASSIFIER_FILE, "evaluator")
    logger.end()
    floors = {k[len("floor_"):]: v for k, v in fitted.metrics.items() if k.startswith("floor_")}
    quality = (f"test accuracy {fitted.metrics['test_accuracy']:.4f}"
               if "test_accuracy" in fitted.metrics else "label-free (autoencoder), test "
               f"reconstruction MSE {fitted.metrics['test_reconstruction_mse']:.4g}")
    print(f"evaluator {quality}; floors (test vs train): "
          + ", ".join(f"{k}={v:.4g}" for k, v in floors.items()))
    return fitted.metrics
