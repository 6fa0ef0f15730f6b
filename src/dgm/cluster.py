"""The one boundary with Ray's runtime: joining or starting Ray, resource checks, storage
locations, the environment settings Ray reads, quiet logging, and every use of a private Ray
API (``tests/test_cluster.py`` pins them to the installed Ray version).

Ray Train, Tune and Core *public* APIs (``TorchTrainer``, ``Tuner``, actors) are used where
they serve: ``training/ray_train.py``, ``tuning/`` and ``generation/``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import ray

from dgm.errors import DgmError

# The Ray version whose private APIs below were checked (see tests/test_cluster.py).
CHECKED_RAY_VERSION = "2.60.0"


# --- joining ---------------------------------------------------------------------------------
def ensure_ray() -> None:
    """Connect to ``$RAY_ADDRESS`` if set, else start a local Ray (unless one is running)."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", logging_level="WARNING")


# --- resources -------------------------------------------------------------------------------
def decide_use_gpu(setting: bool | str, num_workers: int, what: str = "train.use_gpu") -> bool:
    """``auto`` uses GPUs only when the cluster has one per worker.

    (Train V2 with ``use_gpu=True`` and no GPU retries the worker start forever.)
    """
    gpus = ray.cluster_resources().get("GPU", 0)
    if setting == "auto":
        return gpus >= num_workers
    if setting and gpus < num_workers:
        raise DgmError(f"{what} is true but the cluster has {gpus:g} GPU(s) "
                       f"for {num_workers} worker(s)")
    return bool(setting)


def check_resources(*, workers: int, cpus_per_worker: float, what: str,
                    driver_cpus: float = 0.0, use_gpu: bool = False) -> None:
    """Fail at once, not after waiting forever, when ``workers`` × ``cpus_per_worker`` (plus a
    driver of ``driver_cpus``) cannot be placed on the cluster: too few CPUs in all, a worker
    or the driver larger than every node, or fewer GPUs than workers when ``use_gpu``.

    ``what`` names the settings in the message, e.g. ``train.num_workers ×
    train.cpus_per_worker``.
    """
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 0)
    need = driver_cpus + workers * cpus_per_worker
    if need > cpus:
        raise DgmError(f"{what}: {need:g} CPUs needed, but the Ray cluster has {cpus:g}")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    biggest = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    for amount, name in ((cpus_per_worker, "one worker"), (driver_cpus, "the driver")):
        if amount > biggest:
            raise DgmError(f"{what}: {name} needs {amount:g} CPUs but no node of the Ray "
                           f"cluster has more than {biggest:g}")
    gpus = resources.get("GPU", 0)
    if use_gpu and gpus < workers:
        raise DgmError(f"{what}: {workers} worker(s) need a GPU each but the cluster has "
                       f"{gpus:g}")


def concurrency(need_cpus: float, wanted: int, what: str) -> int:
    """How many units of ``need_cpus`` CPUs (e.g. tuning trials) fit the cluster at once, at
    most ``wanted``; more would each hold part of the CPUs while waiting for the rest, and
    nothing would progress."""
    cpus = ray.cluster_resources().get("CPU", 0)
    fits = max(1, int(cpus // need_cpus))
    if wanted > fits:
        print(f"tune: {fits} trial(s) at a time ({what} is {wanted}, but each trial needs "
              f"{need_cpus:g} of the cluster's {cpus:g} CPUs)", flush=True)
    return min(wanted, fits)


def alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"])


# --- storage ---------------------------------------------------------------------------------
def storage_location(path: str | Path) -> str:
    """A URI (``s3://…``, ``gs://…``) as given; a local path made absolute (Ray needs it)."""
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())


def check_storage(storage: str, shared: bool, what: str = "tune.storage_path") -> None:
    """A local storage path serves a multi-node cluster only if declared shared."""
    nodes = alive_nodes()
    if nodes > 1 and "://" not in storage and not shared:
        raise DgmError(f"{what} {storage} is a local path but the Ray cluster has "
                       f"{nodes} nodes: use a URI (s3://, gs://) or a path every node "
                       "mounts, with tune.shared_storage: true")


def latest_run_name(storage_path: Path, prefix: str) -> str | None:
    """The newest Ray Train run under ``storage_path`` whose name starts with ``prefix``."""
    if not storage_path.is_dir():
        return None
    runs = sorted((p for p in storage_path.iterdir() if p.is_dir() and p.name.startswith(prefix)),
                  key=lambda p: p.stat().st_mtime)
    return runs[-1].name if runs else None


def timestamp() -> str:
    """UTC ``YYYYmmdd-HHMMSS``: the suffix of run and study names."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


# --- environment settings --------------------------------------------------------------------
def train_environment(report_interval_s: float) -> dict[str, str]:
    """Settings Ray Train V2 reads from the driver's environment when ``fit`` starts: the
    report interval (each report waits for the previous one to be collected; Ray's default
    of 2 s caps training at one epoch per 2 s), and no patched ``print`` in workers (it logs
    every progress line twice)."""
    return {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(report_interval_s),
            "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def apply_train_environment(report_interval_s: float) -> None:
    """Set :func:`train_environment` in this process (before ``TorchTrainer.fit``)."""
    os.environ.update(train_environment(report_interval_s))


# Seconds Tune waits for a stopped trial's function to return before it reuses the trial's
# actor for the next trial (Ray's default of 2 s is shorter than a Train run's shutdown).
TRIAL_RESET_TIMEOUT_S = 60


def apply_tune_environment() -> None:
    """The study's state saved each second (so ``--resume`` loses little), unless set."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")


# --- logging ---------------------------------------------------------------------------------
def quiet_reports() -> None:
    """No INFO line per ``ray.train.report`` (Train V2 logs each under its module's path)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context  # private: pinned by a test
    except ImportError:  # another Ray layout: the lines stay, nothing breaks
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def root_cause(exc: BaseException) -> str:
    """The last line of the innermost error message of a Ray error: what a user needs."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Diverged" in line:
            return line.strip()[:500]
    return (lines[-1] if lines else type(exc).__name__)[:500]


# --- private APIs: a stopped Tune trial ends its Train run -----------------------------------
def abort_train_run_when_stopped(report) -> threading.Event:
    """End this trial's Ray Train run as soon as Tune stops the trial; the returned event
    is set once that happened. ``report``: the run's ``TuneReportCallback``.

    A trial stopped by ASHA is still inside ``TorchTrainer.fit``: its controller blocks on
    the report queue that nobody reads any more. Tune signals the stop through the trial
    session's stop event (before reusing the actor, or before killing it); this watcher then
    removes the report queue, the controller's next report fails, and the controller shuts
    its workers down and returns, so ``fit`` raises and the actor is free for the next trial.
    No public API exposes either the stop event or the queue (private: pinned by a test).
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
