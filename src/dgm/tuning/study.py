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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from dgm.config import Params, TrainConfig, TuneConfig
from dgm.errors import DgmError
from dgm.evaluation.validation import default_metric
from dgm.models.registry import config_from_dict
from dgm.training.ray_train import (
    build_job,
    controller_environment,
    decide_use_gpu,
    ensure_ray,
    make_trainer,
    root_cause,
    storage_location,
)
from dgm.tuning.space import apply_overrides, grid_points, to_param_space

TRIAL_TAG = "dgm.trial_id"


# --- checks before anything starts -----------------------------------------------------------
def check_resources(cfg: TuneConfig, use_gpu: bool) -> None:
    """Fail at once when a trial can never be placed, instead of waiting forever."""
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 0)
    need = cfg.trial_cpus + cfg.num_workers * cfg.cpus_per_worker
    if need > cpus:
        raise DgmError(f"a trial needs {need:g} CPUs (tune.trial_cpus + tune.num_workers × "
                       f"tune.cpus_per_worker) but the Ray cluster has {cpus:g}")
    biggest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    for what, amount in (("tune.trial_cpus", cfg.trial_cpus),
                         ("tune.cpus_per_worker", cfg.cpus_per_worker)):
        if amount > biggest:
            raise DgmError(f"{what} is {amount:g} CPUs but no node of the Ray cluster has "
                           f"more than {biggest:g}")
    gpus = resources.get("GPU", 0)
    if use_gpu and gpus < cfg.num_workers:
        raise DgmError(f"tune.use_gpu needs {cfg.num_workers} GPUs but the cluster has {gpus:g}")


def concurrency(cfg: TuneConfig) -> int:
    """Trials that fit the cluster at once: more would each hold their driver's CPUs while
    their Train workers wait for the rest, and the study would never progress."""
    need = cfg.trial_cpus + cfg.num_workers * cfg.cpus_per_worker
    cpus = ray.cluster_resources().get("CPU", 0)
    fits = max(1, int(cpus // need))
    if cfg.max_concurrent_trials > fits:
        print(f"tune: {fits} trial(s) at a time (tune.max_concurrent_trials is "
              f"{cfg.max_concurrent_trials}, but each trial needs {need:g} of the cluster's "
              f"{cpus:g} CPUs)", flush=True)
    return min(cfg.max_concurrent_trials, fits)


def check_storage(storage: str, shared: bool) -> None:
    """A local ``storage_path`` serves a multi-node cluster only if declared shared."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) > 1 and "://" not in storage and not shared:
        raise DgmError(f"tune.storage_path {storage} is a local path but the Ray cluster has "
                       f"{len(nodes)} nodes: use a URI (s3://, gs://) or a path every node "
                       "mounts, with tune.shared_storage: true")


# --- the trial ----------------------------------------------------------------------------------
def run_trial(config: dict[str, Any], job: dict[str, Any]) -> None:
    """One trial: the model's config with ``config`` applied, trained by a ``TorchTrainer``
    whose rank 0 reports the val metric to Tune each epoch."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from dgm.tracking.mlflow_runs import RunLogger, start_child_run

    trial_id = tune.get_context().get_trial_id()
    model_cfg = apply_overrides(config_from_dict(job["model"]), config)
    train_cfg = TrainConfig.model_validate(job["train"])
    node_id = ray.get_runtime_context().get_node_id()
    run_id = start_child_run(
        job["experiment"], job["parent_run_id"], f"{job['study']}-{trial_id}",
        {TRIAL_TAG: trial_id}, {"trial": config, "model": model_cfg.model_dump(),
                                "train": train_cfg.model_dump()},
        {"dgm.stage": "tune-trial", "dgm.node_id": node_id, "dgm.study": job["study"],
         "dgm.trial_process": str(os.getpid())},
        job["tracking_uri"])
    worker_job = build_job(Path(job["dataset_dir"]), model_cfg, train_cfg, run_id,
                           job["tracking_uri"], job["validation"])
    use_gpu = decide_use_gpu(train_cfg.use_gpu, train_cfg.num_workers)
    report = TuneReportCallback()
    trainer = make_trainer(worker_job, train_cfg, job["train_storage"], trial_id, use_gpu,
                           callbacks=[report])
    os.environ.update(controller_environment(train_cfg))
    stopped = abort_train_run_when_stopped(report)
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        if stopped.is_set():  # the scheduler stopped the trial: the driver ends its run
            return
        RunLogger(run_id, job["tracking_uri"]).end("FAILED", root_cause(exc))
        raise
    RunLogger(run_id, job["tracking_uri"]).end("FINISHED")


# Seconds Tune waits for a stopped trial's function to return before it reuses the trial's
# actor for the next trial (Ray's default of 2 s is shorter than a Train run's shutdown).
TRIAL_RESET_TIMEOUT_S = 60


def abort_train_run_when_stopped(report) -> threading.Event:
    """End this trial's Ray Train run as soon as Tune stops the trial; the returned event
    is set once that happened.

    A trial stopped by ASHA is still inside ``TorchTrainer.fit``: its controller blocks on
    the report queue that nobody reads any more. Tune signals the stop through the trial
    session's stop event (before reusing the actor, or before killing it); this watcher then
    removes the report queue, the controller's next report fails, and the controller shuts
    its workers down and returns, so ``fit`` raises and the actor is free for the next trial.
    """
    from ray.train._internal.session import get_session

    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(TRIAL_RESET_TIMEOUT_S)
    stop = get_session().stop_event
    queue = report._training_actor_item_queue
    stopped = threading.Event()

    def watch() -> None:
        stop.wait()
        stopped.set()
        try:
            ray.kill(queue.actor)
        except Exception:  # noqa: BLE001 - the queue is already gone with its trial
            pass

    threading.Thread(target=watch, name="dgm-trial-stop", daemon=True).start()
    return stopped


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


def trial_train_config(params: Params) -> TrainConfig:
    """The training of one trial: the train params with the study's budget and resources."""
    cfg = params.tune
    return params.train.model_copy(update={
        "epochs": cfg.epochs, "max_steps": cfg.max_steps, "num_workers": cfg.num_workers,
        "cpus_per_worker": cfg.cpus_per_worker, "use_gpu": cfg.use_gpu})


def optuna_searcher(cfg: TuneConfig):
    """Optuna's TPE, seeded, with a short random start-up so small studies use the model
    (metric and mode come from the ``TuneConfig``)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    startup = min(10, max(2, cfg.num_samples // 3))
    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.seed,
                                                           n_startup_trials=startup))


def make_tuner(trainable, space, cfg: TuneConfig, key: str, storage: str, study: str,
               callbacks: list, concurrency: int):
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
        tune_config=tune.TuneConfig(metric=key, mode=cfg.mode, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=concurrency,
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
    return tune.with_resources(tune.with_parameters(function, job=job), {"cpu": cfg.trial_cpus})


def run_study(params: Params, model_name: str, *, dataset_dir: Path, evaluator_dir: Path,
              storage_path: Path, tracking_uri: str, pointer: Path,
              resume: bool = False) -> StudyResult:
    """Search model ``model_name``'s space; return the trials and the best one.

    ``pointer`` records the study (name, storage, parent run) so ``resume`` finds it.
    """
    from dgm.tracking.mlflow_runs import reopen_run, start_run

    cfg = params.tune
    model_cfg = params.model(model_name)
    space = params.search_space(model_name)
    metric = cfg.metric or default_metric(model_cfg.family)
    key = f"val_{metric}"
    ensure_ray()
    use_gpu = decide_use_gpu(cfg.use_gpu, cfg.num_workers)
    check_resources(cfg, use_gpu)
    experiment = f"dgm-{params.data.name}"
    if resume:
        if not pointer.is_file():
            raise DgmError(f"--resume: no earlier study of {model_name} ({pointer} is missing)")
        record = json.loads(pointer.read_text())
        study, storage, parent_run_id = (record["study"], record["storage"],
                                         record["parent_run_id"])
        check_storage(storage, cfg.shared_storage)
        if not tune.Tuner.can_restore(f"{storage}/{study}"):
            raise DgmError(f"--resume: {storage}/{study} holds no restorable study")
        reopen_run(parent_run_id, tracking_uri)
    else:
        storage = storage_location(cfg.storage_path or storage_path)
        check_storage(storage, cfg.shared_storage)
        study = f"tune-{params.data.name}-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent_run_id = start_run(
            experiment, study,
            {"tune": cfg.model_dump(exclude={"space"}), "model": model_cfg.model_dump(),
             "space": {k: v.model_dump(exclude_none=True) for k, v in space.items()}},
            {"dgm.stage": "tune", "dgm.dataset": params.data.name, "dgm.model": model_name},
            uri=tracking_uri)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json.dumps({"study": study, "storage": storage,
                                       "parent_run_id": parent_run_id}))
    job = {
        "study": study, "experiment": experiment, "parent_run_id": parent_run_id,
        "tracking_uri": tracking_uri, "dataset_dir": str(Path(dataset_dir).resolve()),
        "model": model_cfg.model_dump(), "train": trial_train_config(params).model_dump(),
        "train_storage": f"{storage}/{study}-train",
        "validation": {"metric": metric, "data_dir": str(Path(dataset_dir).resolve()),
                       "evaluator_dir": str(Path(evaluator_dir).resolve()),
                       "num_samples": cfg.eval_samples, "seed": params.evaluate.seed,
                       "importance_samples": cfg.nll_importance_samples,
                       "max_images": cfg.nll_max_images,
                       "options": params.evaluate.metric_options.model_dump()},
    }
    total = len(grid_points(space)) if cfg.searcher == "grid" else cfg.num_samples
    callbacks = [TrialRuns(job, key, total)]
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # study state saved each second
    if resume:  # the restored study keeps its run config (and callbacks)
        tuner = tune.Tuner.restore(f"{storage}/{study}", trainable_for(job, cfg),
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = make_tuner(trainable_for(job, cfg), space, cfg, key, storage, study, callbacks,
                           concurrency(cfg))
    grid = tuner.fit()
    check_complete(f"{storage}/{study}", total, model_name)
    return collect(grid, key, cfg.mode, study, parent_run_id, job)


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
