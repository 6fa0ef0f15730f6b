"""DVC stage `tune@MODEL`: a Ray Tune study of one model (a `tuned: false` record when
``tune.models`` does not list it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgm.config import Params
from dgm.data.parquet import count_rows, read_meta
from dgm.errors import DgmError
from dgm.models.registry import check_classes
from dgm.stages.layout import layout
from dgm.tracking.names import experiment_name
from dgm.tuning.results import write_study, write_untuned


def run(params: Params, model_name: str, root: Path | None = None,
        resume: bool = False) -> dict[str, Any]:
    """Search ``model_name``'s hyperparameters (if ``tune.models`` lists it) and write
    ``artifacts/tune/<dataset>/<model>/``: ``best.yaml`` (what `train` applies),
    ``results.parquet`` (one row per trial) and ``curves.csv`` (val metric per epoch)."""
    lay = layout(params, root)
    config = params.model(model_name)
    out = lay.tune_dir(model_name)
    if model_name not in params.tune.models:
        if resume:
            raise DgmError(f"--resume: {model_name} is not in tune.models")
        write_untuned(out, model_name)
        print(f"{model_name}: not in tune.models; `train` uses models.{model_name} as set")
        return {"model": model_name, "tuned": False}
    meta = read_meta(lay.data_dir / "train")
    check_classes(config, len(meta.class_names), meta.name, model_name)
    # Ray Tune and MLflow: only for a model that is tuned (seconds of start-up otherwise)
    from dgm.tracking.mlflow_runs import tracking_uri
    from dgm.tuning.study import StudyPlan, run_study, trial_train_config

    trial_train_config(params.train, params.tune).check_batch(
        count_rows(lay.data_dir / "train"), "tune")

    uri = tracking_uri(lay.root)
    plan = StudyPlan(
        model_name=model_name, model_config=config, space=params.search_space(model_name),
        dataset=params.data.name, dataset_dir=lay.data_dir, evaluator_dir=lay.evaluator_dir,
        storage_path=lay.ray_storage_of(params.cluster), cluster_storage=params.cluster.storage,
        tracking_uri=uri,
        experiment=experiment_name(params.data.name), pointer=lay.study_pointer(model_name),
        eval_seed=params.evaluate.seed, metric_options=params.evaluate.metric_options)
    result = run_study(params.tune, params.train, plan, resume=resume)
    record = write_study(result, out, model_name, config.family, uri)
    print(f"{model_name}: best trial {record['trial_id']} {record['metric']}="
          f"{record['score']:.4g}: " + ", ".join(f"{k}={v}" for k, v in record["params"].items()))
    return record
