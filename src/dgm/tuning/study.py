"""A Ray Tune study over one model's hyperparameters; every trial is a Ray Train run.

The driver checks the cluster (resources, shared storage), opens the study's MLflow parent
run and runs the ``Tuner``: ASHA stops weak trials by the evaluator's val metric, reported
each epoch, and Optuna's TPE proposes the next configs (or a random or a grid search). Each
trial is a Tune function that builds and fits a ``TorchTrainer`` (Train V2 cannot be handed to
a ``Tuner``), its workers reporting through ``TuneReportCallback``, and logs to a child run.
A failed trial is retried from its last training checkpoint; ``resume`` restores the study
(``Tuner.restore``) and runs only the trials that had not finished.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from dgm.cluster import (
    abort_train_run_when_stopped,
    apply_train_environment,
    apply_tune_environment,
    check_code_version,
    code_version,
    concurrency,
    decide_use_gpu,
    root_cause,
    ship_directory,
)
from dgm.errors import DgmError
from dgm.evaluation.likelihood import LIKELIHOOD_METRIC
from dgm.evaluation.metrics import MetricOptions, metric_mode
from dgm.models.base import ModelConfigBase
from dgm.models.registry import config_from_dict, validation_metric
from dgm.storage import timestamp
from dgm.timing import phase
from dgm.training.config import TrainConfig
from dgm.training.ray_train import (
    build_job,
    check_worker_memory,
    make_trainer,
    prepare_cluster,
    resolve_ingest,
    ship_dataset,
    train_log_level,
    training_data,
)
from dgm.tuning.config import TuneConfig
from dgm.tuning.space import Dimension, apply_overrides, grid_points, to_param_space

TRIAL_TAG = "dgm.trial_id"


# --- the trial ----------------------------------------------------------------------------------
def run_trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    """One trial: the model's config with ``config`` applied, trained by a ``TorchTrainer``
    whose rank 0 reports the val metric to Tune each epoch."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from dgm.evaluation.validation import ValidationCallback
    from dgm.tracking.callbacks import MLflowEpochLogger

    check_code_version(job["code_version"], "a Tune trial")
    tracking = job["tracking"]  # reachable from this trial's node
    trial_id = tune.get_context().get_trial_id()
    model_cfg = apply_overrides(config_from_dict(job["model"]), config)
    train_cfg = TrainConfig.model_validate(job["train"])
    node_id = ray.get_runtime_context().get_node_id()
    run_id = tracking.start_child_run(
        job["experiment"], job["parent_run_id"], f"{job['study']}-{trial_id}",
        {TRIAL_TAG: trial_id}, {"trial": config, "model": model_cfg.model_dump(),
                                "train": train_cfg.model_dump()},
        {"dgm.stage": "tune-trial", "dgm.node_id": node_id, "dgm.study": job["study"],
         "dgm.trial_process": str(os.getpid())})
    callbacks = [ValidationCallback(job["validation"]),  # adds val_<metric> before logging
                 MLflowEpochLogger(run_id, tracking, train_cfg.sample_every)]
    worker_job = build_job(job["dataset"], job["image_shape"], model_cfg, train_cfg, callbacks)
    use_gpu = decide_use_gpu(train_cfg.use_gpu, train_cfg.num_workers, "tune.use_gpu")
    report = TuneReportCallback()
    trainer = make_trainer(worker_job, train_cfg, job["train_storage"], trial_id, use_gpu,
                           callbacks=[report], log_level=job.get("log_level"))
    apply_train_environment(train_cfg.report_interval_s)
    stopped = abort_train_run_when_stopped(report)
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        if stopped.is_set():  # the scheduler stopped the trial: the driver ends its run
            return
        tracking.end(run_id, "FAILED", root_cause(exc))
        raise
    # Stopped after its last report was queued, the run may still finish its epochs: the
    # trial ended when the scheduler stopped it, and the driver ends its run (KILLED).
    if not stopped.is_set():
        tracking.end(run_id, "FINISHED")


def ending(epoch: int | None, job: dict[str, Any]) -> tuple[str, str | None]:
    """How a trial whose function did not return ended: FINISHED when it reached its last
    epoch (Tune stops a trial at ``max_t`` itself), else KILLED by the scheduler."""
    if epoch is not None and epoch >= job["train"]["epochs"]:
        return "FINISHED", None
    return "KILLED", f"stopped by the scheduler after epoch {epoch}"


class TrialRuns(tune.Callback):
    """Driver side: ends each trial's child run (Tune stops trials without returning from
    the function: FINISHED at the last epoch, else KILLED by ASHA) and prints one line per
    finished trial."""

    def __init__(self, job: dict[str, Any], key: str, total: int):
        self.job, self.key, self.total, self.done = job, key, total, 0

    def _end(self, trial, status: str, reason: str | None) -> None:
        from dgm.tracking.mlflow_runs import end_child_run

        end_child_run(self.job["experiment"], self.job["parent_run_id"],
                      {TRIAL_TAG: trial.trial_id}, status, reason, self.job["tracking_uri"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        self._end(trial, *ending(last.get("epoch"), self.job))
        self.done += 1
        score = last.get(self.key)
        print(f"tune: trial {self.done}/{self.total} {trial.trial_id} done at epoch "
              f"{last.get('epoch')}: {self.key}={score if score is None else f'{score:.4g}'}",
              flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "FAILED", f"trial error (retried up to tune.max_failures): "
                                   f"{trial.error_file or ''}")


# --- the study ---------------------------------------------------------------------------------
@dataclass
class StudyResult:
    """What a finished study leaves behind."""

    study: str
    parent_run_id: str
    key: str
    mode: str
    best: dict[str, Any]  # trial_id, score, config (the overrides), run_id
    trials: list[dict[str, Any]]  # one row per trial (the results table)
    curves: list[dict[str, Any]]  # trial, epoch, score


def trial_train_config(train: TrainConfig, cfg: TuneConfig) -> TrainConfig:
    """The training of one trial: the train params with the study's budget, resources and
    retries."""
    return train.model_copy(update={
        "epochs": cfg.epochs, "max_steps": cfg.max_steps, "num_workers": cfg.num_workers,
        "cpus_per_worker": cfg.cpus_per_worker, "use_gpu": cfg.use_gpu,
        # a lost worker (its node gone) restarts from the last checkpoint inside the trial
        "max_failures": cfg.max_failures})


def optuna_searcher(cfg: TuneConfig):
    """Optuna's TPE, seeded, with a short random start-up so small studies use the model
    (metric and mode come from the ``TuneConfig``)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    startup = min(10, max(2, cfg.num_samples // 3))
    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.seed,
                                                           n_startup_trials=startup))


def make_tuner(trainable, space, cfg: TuneConfig, key: str, mode: str, storage: str,
               study: str, callbacks: list, concurrency: int):
    """The ``Tuner`` of a fresh study (at most ``concurrency`` trials at once)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    num_samples, search_alg = cfg.num_samples, None
    if cfg.searcher == "grid":
        points = grid_points(space)
        param_space = {"__grid": tune.grid_search(points)}
        num_samples = 1
        search_alg = BasicVariantGenerator(max_concurrent=concurrency)
    else:
        param_space = to_param_space(space)
        search_alg = (optuna_searcher(cfg) if cfg.searcher == "optuna"
                      else BasicVariantGenerator(random_state=cfg.seed,
                                                 max_concurrent=concurrency))
    # max_t one past the last epoch: a trial that trains to the end returns from its
    # function and its TorchTrainer shuts down cleanly. Stopped by Tune at max_t instead, the
    # trial's actor is killed while Ray Train is releasing its workers, and their placement
    # group leaks (seen with Ray 2.60), starving every later trial of those CPUs.
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=cfg.epochs + 1,
                               grace_period=cfg.grace_period,
                               reduction_factor=cfg.reduction_factor)
                 if cfg.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=key, mode=mode, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=num_samples,
                                    # BasicVariantGenerator limits itself (given
                                    # both, Tune warns and drops this one).
                                    max_concurrent_trials=(concurrency
                                                           if cfg.searcher == "optuna"
                                                           else None),
                                    # A trial's actor serves the next trial: a stopped
                                    # trial ends its Train run first (see
                                    # abort_train_run_when_stopped).
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=study, storage_path=storage, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                  callbacks=callbacks),
    )


def _ungrid(trainable):
    """A grid point arrives as ``{"__grid": {...}}``; the trial wants the dict itself."""
    def run(config, job):
        return run_trial(config.get("__grid", config), job)
    return run


def trainable_for(job: dict[str, Any], cfg: TuneConfig):
    function = _ungrid(run_trial) if cfg.searcher == "grid" else run_trial
    # Tune refuses a request of nothing: a CPU-less trial driver asks for 1 MiB of memory
    resources = {"cpu": cfg.trial_cpus} if cfg.trial_cpus else {"cpu": 0, "memory": 2**20}
    return tune.with_resources(tune.with_parameters(function, job=job), resources)


@dataclass
class StudyPlan:
    """What a study searches and where it reads and writes (besides its ``TuneConfig``)."""

    model_name: str
    model_config: ModelConfigBase
    space: dict[str, Dimension]
    dataset: str
    dataset_dir: Path
    evaluator_dir: Path
    storage_path: str  # of Ray Tune and the trials' Ray Train runs (cluster.storage or local)
    tracking_uri: str
    experiment: str
    pointer: Path  # records the study (name, storage, parent run) so ``resume`` finds it
    eval_seed: int = 0
    metric_options: MetricOptions | None = None
    cluster_storage: str | None = None  # the cluster.storage setting (None: local)


def run_study(cfg: TuneConfig, train: TrainConfig, plan: StudyPlan,
              resume: bool = False) -> StudyResult:
    """Search ``plan``'s space; return the trials and the best one."""
    from dgm.tracking.mlflow_runs import reopen_run, start_run
    from dgm.tracking.relay import worker_tracking

    metric = cfg.metric or validation_metric(plan.model_config.family)
    key, mode = f"val_{metric}", cfg.mode or metric_mode(metric)
    trial_train = trial_train_config(train, cfg)
    prepare_cluster(trial_train, "tune", driver_cpus=cfg.trial_cpus,
                    storage=plan.cluster_storage)
    check_worker_memory(trial_train, plan.dataset_dir, resolve_ingest(
        trial_train.ingest, plan.cluster_storage, plan.dataset_dir))  # before any trial starts
    if resume:
        if not plan.pointer.is_file():
            raise DgmError(f"--resume: no earlier study of {plan.model_name} ({plan.pointer} "
                           "is missing)")
        record = json.loads(plan.pointer.read_text())
        study, storage, parent_run_id = (record["study"], record["storage"],
                                         record["parent_run_id"])
        if not tune.Tuner.can_restore(f"{storage}/{study}"):
            raise DgmError(f"--resume: {storage}/{study} holds no restorable study")
        reopen_run(parent_run_id, plan.tracking_uri)
    else:
        storage = plan.storage_path
        study = f"tune-{plan.dataset}-{plan.model_name}-{timestamp()}"
        parent_run_id = start_run(
            plan.experiment, study,
            {"tune": cfg.model_dump(exclude={"space"}), "model": plan.model_config.model_dump(),
             "space": {k: v.model_dump(exclude_none=True) for k, v in plan.space.items()}},
            {"dgm.stage": "tune", "dgm.dataset": plan.dataset, "dgm.model": plan.model_name},
            uri=plan.tracking_uri)
        plan.pointer.parent.mkdir(parents=True, exist_ok=True)
        plan.pointer.write_text(json.dumps({"study": study, "storage": storage,
                                            "parent_run_id": parent_run_id}))
    options = plan.metric_options or MetricOptions()
    # Trials and their workers read nothing from the driver's disk: the dataset and the
    # evaluator travel through the object store, MLflow calls through `tracking`.
    dataset, image_shape = ship_dataset(plan.dataset_dir)  # the val split scores each epoch
    train_data = dataset
    if resolve_ingest(trial_train.ingest, plan.cluster_storage,
                      plan.dataset_dir) == "stream":
        train_data = training_data(plan.dataset_dir, "stream", plan.cluster_storage)[0]
    evaluator = (ship_directory(plan.evaluator_dir)
                 if metric != LIKELIHOOD_METRIC and Path(plan.evaluator_dir).is_dir() else None)
    job = {
        "study": study, "experiment": plan.experiment, "parent_run_id": parent_run_id,
        "tracking_uri": plan.tracking_uri, "tracking": worker_tracking(plan.tracking_uri),
        "dataset": train_data, "image_shape": image_shape, "code_version": code_version(),
        "model": plan.model_config.model_dump(), "train": trial_train.model_dump(),
        "train_storage": f"{storage}/{study}-train", "log_level": train_log_level(),
        "validation": {"metric": metric, "data_dir": dataset, "evaluator_dir": evaluator,
                       "num_samples": cfg.eval_samples, "seed": plan.eval_seed,
                       "importance_samples": cfg.nll_importance_samples,
                       "max_images": cfg.nll_max_images, "options": options.model_dump()},
    }
    total = len(grid_points(plan.space)) if cfg.searcher == "grid" else cfg.num_samples
    callbacks = [TrialRuns(job, key, total)]
    apply_tune_environment()
    if resume:  # the restored study keeps its run config (and callbacks)
        tuner = tune.Tuner.restore(f"{storage}/{study}", trainable_for(job, cfg),
                                   resume_unfinished=True, resume_errored=True)
    else:
        need = cfg.trial_cpus + cfg.num_workers * cfg.cpus_per_worker
        tuner = make_tuner(trainable_for(job, cfg), plan.space, cfg, key, mode, storage, study,
                           callbacks, concurrency(need, cfg.max_concurrent_trials,
                                                  "tune.max_concurrent_trials"))
    with phase("ray_tune"):
        grid = tuner.fit()
    check_complete(f"{storage}/{study}", total, plan.model_name)
    return collect(grid, key, mode, study, parent_run_id, job)


def check_complete(path: str, total: int, model_name: str) -> None:
    """An interrupted study (Ctrl-C, a lost driver) is resumed, never written as finished."""
    from ray.tune import ExperimentAnalysis

    statuses = [t.status for t in ExperimentAnalysis(path).trials]
    unfinished = [s for s in statuses if s not in ("TERMINATED", "ERROR")]
    if unfinished or len(statuses) < total:
        raise DgmError(f"the study stopped with {total - len(statuses) + len(unfinished)} of "
                       f"{total} trials unfinished; continue it with `dgm tune --model "
                       f"{model_name} --resume`")


def collect(grid, key: str, mode: str, study: str, parent_run_id: str,
            job: dict[str, Any]) -> StudyResult:
    """Rows of the results table, curves and the best trial from a ``ResultGrid``."""
    from dgm.tracking.mlflow_runs import child_runs, end_child_run

    for result in grid:  # no run stays RUNNING (a callback may have missed a trial)
        metrics = result.metrics or {}
        if metrics.get("trial_id"):
            status, reason = (("FAILED", root_cause(result.error)) if result.error
                              else ending(metrics.get("epoch"), job))
            end_child_run(job["experiment"], parent_run_id, {TRIAL_TAG: metrics["trial_id"]},
                          status, reason, job["tracking_uri"])
    runs = {r.data.tags.get(TRIAL_TAG): r for r in child_runs(
        job["experiment"], parent_run_id, job["tracking_uri"])}
    trials, curves = [], []
    pick = min if mode == "min" else max
    for result in grid:
        frame = result.metrics_dataframe
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or (result.path or "").rsplit("/", 1)[-1]
        scores = []
        if frame is not None and key in frame and "epoch" in frame:
            for epoch, score in zip(frame["epoch"], frame[key], strict=True):
                curves.append({"trial": trial_id, "epoch": int(epoch), "score": float(score)})
                scores.append(float(score))
        run = runs.get(trial_id)
        config = result.config.get("__grid", result.config) if result.config else {}
        trials.append({
            "trial_id": trial_id,
            "status": "ERROR" if result.error else "TERMINATED",
            "epochs": int(metrics.get("epoch", 0) or 0),
            "score_last": scores[-1] if scores else float("nan"),
            "score_best": pick(scores) if scores else float("nan"),
            "run_id": run.info.run_id if run else "",
            "run_status": run.info.status if run else "",
            "node_id": run.data.tags.get("dgm.node_id", "") if run else "",
            "attempts": int(run.data.tags.get("dgm.attempts", "1")) if run else 0,
            "error": root_cause(result.error) if result.error else "",
            **{f"config.{k}": v for k, v in config.items()},
        })
    finished = [t for t in trials
                if t["status"] == "TERMINATED" and not math.isnan(t["score_last"])]
    if not finished:
        errors = "; ".join(t["error"] for t in trials if t["error"])[:500]
        raise DgmError(f"no trial of {study} reported {key}" + (f": {errors}" if errors else ""))
    best = pick(finished, key=lambda t: t["score_last"])
    best_config = {k[len("config."):]: v for k, v in best.items() if k.startswith("config.")}
    return StudyResult(study, parent_run_id, key, mode,
                       {"trial_id": best["trial_id"], "score": best["score_last"],
                        "config": best_config, "run_id": best["run_id"]}, trials, curves)
