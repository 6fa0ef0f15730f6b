"""The one boundary with Ray's runtime: joining or starting Ray, resource checks, storage
locations, the environment settings Ray reads, quiet logging, and every use of a private Ray
API (``tests/test_cluster.py`` pins them to the installed Ray version).

Ray Train, Tune and Core *public* APIs (``TorchTrainer``, ``Tuner``, actors) are used where
they serve: ``training/ray_train.py``, ``tuning/`` and ``generation/``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from dgm.errors import DgmError
from dgm.signals import keep_signal_handlers
from dgm.timing import phase

# The Ray version whose private APIs below were checked (see tests/test_cluster.py).
CHECKED_RAY_VERSION = "2.60.0"


# --- joining ---------------------------------------------------------------------------------
def running_cluster_address() -> str | None:
    """The GCS address of a Ray started on this machine (``ray start``) that answers, else
    None (a stale ``ray_current_cluster`` file of a dead Ray is not joined)."""
    marker = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        address = marker.read_text().strip().splitlines()[0]
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=1.0):
            return address
    except (OSError, ValueError, IndexError):
        return None


def code_runtime_env() -> dict:
    """A runtime environment that ships this ``dgm`` package to every worker process of a
    cluster the driver joins (nodes run the job's code, not whatever their image has)."""
    import dgm

    return {"py_modules": [str(Path(dgm.__file__).parent)]}


def ensure_ray() -> None:
    """Join ``$RAY_ADDRESS`` if set, else a Ray already running on this machine, else start a
    local one (``RAY_ADDRESS=local`` always starts one). A joined cluster gets this ``dgm``
    through the job's runtime environment."""
    if ray.is_initialized():
        return
    with phase("ray_start"), keep_signal_handlers():
        _init_ray(os.environ.get("RAY_ADDRESS") or running_cluster_address() or "local")


# private: the module that logs "Token authentication is enabled …" (pinned by a test)
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def start_local_ray(**init_kwargs: Any) -> None:
    """Start a Ray for this process, its dashboard on a free loopback port that every worker's
    State API calls go to (``RAY_API_SERVER_ADDRESS``; else Ray Train's placement-group
    cleaner looks for a cluster in /tmp/ray, may find another or a dead one, and each run
    waits 12 s and prints a traceback). Token authentication stays on, Ray's default, without
    its notice on every start (``RAY_AUTH_MODE`` says otherwise). No Ray Train preemption
    watcher: nothing drains this Ray's one node (the watcher is an actor per run)."""
    logging.getLogger(TOKEN_NOTICE_LOGGER).setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=port, logging_level="WARNING",
             runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
                                       "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}},
             **init_kwargs)


def _init_ray(address: str) -> None:
    if address == "local":
        start_local_ray()
        return
    # Ray merges this with the runtime environment of a submitted job (`ray job submit
    # --working-dir .`); a job that ships its own py_modules keeps them.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    ships_code = "py_modules" in (job.get("runtime_env") or {})
    try:
        ray.init(address=address, logging_level="WARNING",
                 runtime_env=None if ships_code else code_runtime_env())
    except ConnectionError as exc:
        raise DgmError(f"cannot join the Ray cluster at {address}: "
                       f"{str(exc).splitlines()[0]}") from None


def code_version() -> str:
    """A digest of this ``dgm`` package's source: equal on the driver and every worker when
    both run the same code."""
    return _code_version(str(Path(__file__).parent))


@functools.cache
def _code_version(package: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(package).rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def check_code_version(expected: str, where: str) -> None:
    """Refuse to run code other than the driver's (a stale image on a node)."""
    mine = code_version()
    if mine != expected:
        node = ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else "?"
        raise DgmError(f"{where} on node {node} runs dgm code {mine}, the driver's is "
                       f"{expected}: ship the code (join with RAY_ADDRESS, or `ray job submit "
                       "--working-dir .`) or rebuild the image")


def driver_node() -> str:
    """The id of the node this process (the driver) runs on."""
    return ray.get_runtime_context().get_node_id()


def single_node() -> bool:
    """Whether every alive node of the cluster is this process's node (a laptop's Ray)."""
    here = driver_node()
    return all(n["NodeID"] == here for n in ray.nodes() if n["Alive"])


class DriverProxy:
    """Calls an object living in an actor on the driver's node, synchronously (picklable:
    it travels to Ray workers with their job). ``proxy.method(*args)`` returns the result."""

    def __init__(self, handle) -> None:
        self.__dict__["handle"] = handle

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        method = getattr(self.__dict__["handle"], name)
        return lambda *args, **kwargs: ray.get(method.remote(*args, **kwargs))

    def __getstate__(self):
        return self.__dict__["handle"]

    def __setstate__(self, handle) -> None:
        self.__dict__["handle"] = handle


def on_driver_node(cls: type, *args):
    """``cls(*args)`` in a 0-CPU actor pinned to the driver's node, as a :class:`DriverProxy`:
    how workers on other nodes reach what only the driver can (e.g. a SQLite MLflow store)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(cls).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node(), soft=False))
    return DriverProxy(actor.remote(*args))


# --- directories shipped through the object store --------------------------------------------
@dataclass(frozen=True)
class ShippedDirectory:
    """A directory of the driver travelling to Ray workers through the object store (a
    prepared dataset, the evaluator, a model): a worker whose node sees the same files at
    ``source`` uses them there, any other gets a copy in its node's temporary directory,
    made once per content ``digest``."""

    source: str
    digest: str
    ref: Any  # ObjectRef of {relative path: bytes}

    def materialize(self) -> Path:
        """A local directory holding the shipped files."""
        source = Path(self.source)
        if source.is_dir() and directory_digest(source) == self.digest:
            return source
        cache = Path(tempfile.gettempdir()) / "dgm-shipped" / self.digest
        if (cache / ".complete").is_file():
            return cache
        blobs = ray.get(self.ref)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.digest}.", dir=cache.parent))
        for name, data in blobs.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        (tmp / ".complete").touch()
        try:
            os.rename(tmp, cache)
        except OSError:  # another worker of this node made it first
            shutil.rmtree(tmp, ignore_errors=True)
        return cache


def directory_digest(path: str | Path) -> str:
    """A digest of the names and contents of the files under ``path`` (read in chunks)."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def ship_directory(path: str | Path) -> ShippedDirectory:
    """Put the files under ``path`` into the object store (Ray must be initialised)."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise DgmError(f"not a directory: {path}")
    blobs = {p.relative_to(path).as_posix(): p.read_bytes()
             for p in sorted(path.rglob("*")) if p.is_file()}
    return ShippedDirectory(str(path), directory_digest(path), ray.put(blobs))


def materialize(location: ShippedDirectory | str | Path) -> Path:
    """A local path of a shipped directory, or the path itself."""
    if isinstance(location, ShippedDirectory):
        return location.materialize()
    return Path(location)


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
def check_storage(storage: str | None, what: str = "cluster.storage") -> None:
    """Refuse what nodes other than the driver's cannot use: no storage (null) on a
    multi-node cluster, or a path that some node does not see (the node and path named)."""
    if single_node():
        return
    if storage is None:
        raise DgmError(f"{what} is null but the Ray cluster has {alive_nodes()} nodes: set it "
                       "to a URI (s3://…, gs://…) or a path every node mounts")
    if "://" not in storage:
        check_visible(storage, what)


def check_visible(path: str, what: str) -> None:
    """Every alive node sees the directory ``path``: the driver leaves a marker there and a
    0-CPU task on each node looks for it (within 60 s, never a hang)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / f".dgm-visible-{os.getpid()}-{time.time_ns()}"
    marker.write_text("dgm")
    probe = ray.remote(num_cpus=0)(os.path.exists)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker)) for n in nodes], timeout=60)
    except ray.exceptions.GetTimeoutError:
        raise DgmError(f"{what} {path}: the cluster's nodes did not answer within 60 s") from None
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted(n["NodeManagerAddress"] for n, ok in zip(nodes, seen, strict=True) if not ok)
    if blind:
        raise DgmError(f"{what} {path} is not visible on node(s) {', '.join(blind)}: use a URI "
                       "(s3://, gs://) or a path every node mounts")


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


TRIAL_RESET_TIMEOUT_S = 60  # Tune's wait for a stopped trial (default 2 s < a Train shutdown)


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
    """What a user needs of a Ray error: a Train worker's DgmError, else its last error line."""
    for failure in getattr(exc, "worker_failures", {}).values():  # a Train run's workers
        if isinstance(cause := getattr(failure, "cause", failure), DgmError):
            return str(cause)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Diverged" in line]
    return ((errors or lines)[-1] if lines else type(exc).__name__)[:500]


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
