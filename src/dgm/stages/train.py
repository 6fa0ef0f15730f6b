"""DVC stage `train@MODEL`: Ray Train run of one model, tracked in MLflow."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from dgm.config import Params
from dgm.data.parquet import count_rows, read_meta
from dgm.errors import DgmError, TrackingUnreachable
from dgm.models.registry import check_classes
from dgm.stages.layout import Layout, layout, read_json, write_json
from dgm.storage import run_to_resume, timestamp
from dgm.tracking.callbacks import MLflowEpochLogger
from dgm.tracking.lineage import collect_lineage, log_dataset_input, tag_run
from dgm.tracking.mlflow_runs import (
    RunLogger,
    last_logged_step,
    reopen_run,
    start_run,
    tracking_uri,
)
from dgm.tracking.names import experiment_name
from dgm.tracking.pyfunc import log_generator
from dgm.tracking.relay import worker_tracking
from dgm.tracking.system_metrics import system_metrics
from dgm.training import ray_train
from dgm.training.loop import BOOKKEEPING_KEYS
from dgm.tuning.results import tuned_config


def model_config(params: Params, model_name: str, lay: Layout, quiet: bool = False,
                 keep: Collection[str] = ()):
    """``models.<name>`` with the `tune` stage's best params applied (when it tuned the
    model) except the keys in ``keep``; returns (config, the best.yaml record or None)."""
    return tuned_config(params.model(model_name), lay.tune_dir(model_name) / "best.yaml",
                        model_name, quiet=quiet, keep=keep)


def explicit_keys(params: Params, model_name: str, baseline: Params) -> frozenset[str]:
    """The keys of ``models.<name>`` that ``params`` (an explicit ``--params`` file) sets
    otherwise than ``baseline`` (the project's params, or the defaults): the user's choices,
    which win over tuned values."""
    config = params.model(model_name).model_dump()
    reference = (baseline.model(model_name) if model_name in baseline.models
                 else type(params.model(model_name))()).model_dump()
    return frozenset(k for k, v in config.items() if reference.get(k) != v)


def lineage(params: Params, model_name: str, lay: Layout, config=None) -> dict[str, str]:
    """The ``dgm.lineage.*`` tags of training ``model_name`` (``config``: what is trained;
    default: the tuned config)."""
    config = config or model_config(params, model_name, lay, quiet=True)[0]
    return collect_lineage(root=lay.root, dataset=params.data.name, data_dir=lay.data_dir,
                           evaluator_file=lay.evaluator_dir / "classifier.pt",
                           model_config=config, train_config=params.train,
                           stage=f"train@{model_name}")


@contextlib.contextmanager
def run_left_running(error: BaseException | None) -> Iterator[None]:
    """Record a failed run's end; when the tracking server does not answer, say so in one
    line (``error``'s, if it is one of dgm's): the run stays RUNNING until the next run of
    the stage on this host closes it as KILLED (:func:`~dgm.tracking.mlflow_runs.start_run`)."""
    try:
        yield
    except TrackingUnreachable as lost:
        first = error if isinstance(error, DgmError) else lost
        raise DgmError(f"{first}; the MLflow run stays RUNNING until the next `dgm train` of "
                       "this model closes it") from None


def run(params: Params, model_name: str, root: Path | None = None, run_name: str | None = None,
        resume: bool = False, keep: Collection[str] = ()) -> dict[str, Any]:
    """Train ``model_name`` on Ray Train, log it to MLflow, write the stage outputs
    (``keep``: model keys whose value in ``params`` wins over a tuned one)."""
    lay = layout(params, root)
    config, tuned = model_config(params, model_name, lay, keep=keep)
    meta = read_meta(lay.data_dir / "train")
    check_classes(config, len(meta.class_names), meta.name, model_name)
    params.train.check_batch(count_rows(lay.data_dir / "train"))
    # the cluster first: a configuration it cannot run leaves no MLflow run behind
    ray_train.prepare_cluster(params.train, "train", storage=params.cluster.storage)
    prefix = f"{params.data.name}-{model_name}-"
    storage = lay.ray_storage_of(params.cluster)
    if resume:
        run_name = run_to_resume(storage, prefix, run_name)
    run_name = run_name or prefix + timestamp()
    uri = tracking_uri(lay.root)
    run_file = lay.run_pointer(run_name)
    logged_through = 0
    if resume and run_file.is_file():
        run_id = read_json(run_file, "MLflow run record")["run_id"]
        reopen_run(run_id, uri)
        logged_through = last_logged_step(run_id, uri)
    else:
        run_id = start_run(
            experiment_name(params.data.name), run_name,
            {"data": params.data.model_dump(), "model": config.model_dump(),
             "train": params.train.model_dump()},
            {"dgm.stage": "train", "dgm.dataset": params.data.name, "dgm.model": model_name,
             **({"dgm.tuned_by": tuned["study"]} if tuned else {}),
             **({"dgm.kept_over_tuned": ",".join(tuned["kept"])}
                if tuned and tuned.get("kept") else {})},
            uri=uri,
        )
        write_json({"run_id": run_id}, run_file)
    tags = lineage(params, model_name, lay, config)
    tag_run(run_id, tags, uri)  # on resume too
    if not resume:
        log_dataset_input(run_id, tags, uri)
    logger = RunLogger(run_id, uri)
    try:
        with system_metrics(run_id, uri, resume):
            history, state = ray_train.fit(
                dataset_dir=lay.data_dir, model_config=config, train_config=params.train,
                storage_path=storage, run_name=run_name, cluster_storage=params.cluster.storage,
                callbacks=[MLflowEpochLogger(run_id, worker_tracking(uri),
                                             params.train.sample_every, logged_through)],
            )
    except KeyboardInterrupt:
        with run_left_running(None):
            logger.end("KILLED", "interrupted; resume with --resume")
        raise
    except BaseException as exc:
        with run_left_running(exc):
            reason = logger.failure_reason()
            logger.end("FAILED", reason or str(exc))
        if reason:
            raise DgmError(f"training stopped: {reason}") from None
        raise
    out = lay.model_dir(model_name)
    generator_path = ray_train.write_outputs(
        state, history, out,
        extra={"dataset": meta.name, "class_names": list(meta.class_names),
               "checksums": dict(meta.checksums)},
    )
    logger.log_file(out / "history.csv", "curves")
    keys = [k for k in history[0] if k not in BOOKKEEPING_KEYS] if history else []
    epochs = [row["epoch"] for row in history]
    logger.log_lines({k: (epochs, [row[k] for row in history]) for k in keys},
                     "curves/loss_curves.png", "epoch")
    model_uri = log_generator(run_id, generator_path, meta.shape_chw, uri)
    logger.end("FINISHED")
    info = {"run_id": run_id, "model_uri": model_uri, "run_name": run_name,
            "dataset": params.data.name, "model": model_name, "epochs": len(history),
            "final": {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}}
    write_json(info, out / "run.json")
    return info
