"""MLflow runs addressed by id, so the driver and Ray workers log to the same run."""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from dgm.errors import DgmError, TrackingUnreachable
from dgm.paths import home_root, project_root
from dgm.timing import process_start_ticks, timed

TRACKING_ENV = "MLFLOW_TRACKING_URI"


def tracking_uri(root: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI``, else an absolute SQLite file at the project root (the
    repository's, for an experiment DVC runs in a temporary copy: :func:`home_root`).

    Absolute, because Ray workers run in another directory and a relative
    ``sqlite:///mlflow.db`` would silently create a second store there.
    """
    uri = os.environ.get(TRACKING_ENV)
    if uri:
        check_store_kind(uri)
        return uri
    return f"sqlite:///{home_root(root or project_root()) / 'mlflow.db'}"


def check_store_kind(uri: str) -> None:
    """A file store (``file://…`` or a bare path) is refused in one line, as MLflow 3 does
    with an exception, unless ``MLFLOW_ALLOW_FILE_STORE`` opts in."""
    file_store = uri.startswith("file:") or "://" not in uri and not uri.startswith(
        ("sqlite:", "databricks"))
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true")
    if file_store and not allowed:
        raise DgmError(f"{TRACKING_ENV}={uri}: MLflow's file store is retired; use a "
                       "database (sqlite:///path/mlflow.db) or a server (http://…), or set "
                       "MLFLOW_ALLOW_FILE_STORE=true")


def is_sqlite_store(uri: str) -> bool:
    return uri.startswith("sqlite:///")


REACH_TIMEOUT_S = 4.0


# MLflow's HTTP client retries a failed call 7 times with a doubling back-off (minutes per
# call against a dead server, and a training run logs every epoch): dgm's defaults give up
# after ~10 s; a user's own settings of these variables win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def short_reason(exc: BaseException) -> str:
    """The innermost cause of an HTTP failure, e.g. ``[Errno 111] Connection refused`` or
    ``[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: …``."""
    text = str(getattr(exc, "reason", exc)).rsplit("Caused by ", 1)[-1]
    starts = [text.find(marker) for marker in ("[SSL", "[Errno") if marker in text]
    text = text[min(starts):] if starts else text.rsplit(": ", 1)[-1]
    text = re.sub(r"\s*\(_ssl\.c:\d+$", "", text.rstrip(" )'\""))  # OpenSSL's source line
    return text[:300] or type(exc).__name__


@functools.cache
def check_reachable(uri: str) -> None:
    """An HTTP(S) tracking server must answer ``/health`` within ``REACH_TIMEOUT_S``: one
    line now instead of MLflow's minutes of retries (checked once per process). The probe
    is MLflow's own HTTP client, so its TLS settings (``MLFLOW_TRACKING_INSECURE_TLS``,
    ``MLFLOW_TRACKING_SERVER_CERT_PATH``, a client certificate) and credentials apply."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = http_request(get_default_host_creds(uri.rstrip("/")), "/health", "GET",
                                max_retries=0, timeout=REACH_TIMEOUT_S,
                                raise_on_status=False)
    except Exception as exc:  # requests' and MLflow's errors: connection, TLS, timeout
        raise DgmError(f"cannot reach the MLflow tracking server at {uri}: "
                       f"{short_reason(exc)}") from None
    if response.status_code != 200:
        raise DgmError(f"{uri} does not answer as an MLflow tracking server "
                       f"(HTTP {response.status_code} from /health)")


def registry_uri(uri: str | None = None) -> str:
    """The model registry: ``MLFLOW_REGISTRY_URI`` when set, else the tracking store
    ``uri`` (MLflow's own resolution)."""
    mlflow.set_tracking_uri(uri or tracking_uri())
    return mlflow.get_registry_uri()


def client(uri: str | None = None) -> MlflowClient:
    """A client of the tracking store ``uri`` and of the :func:`registry_uri` (both checked
    reachable)."""
    uri = uri or tracking_uri()
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # urllib3 logs every retry as a WARNING; a failure that outlasts them is one dgm line
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    check_reachable(uri)
    registry = registry_uri(uri)  # also sets the tracking URI of mlflow's fluent API
    if registry != uri:
        check_reachable(registry)
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """Id of experiment ``name``, created once (by the driver) if absent.

    With a SQLite store, artifacts go to ``mlartifacts/`` beside the database file (an
    absolute location, whatever the current directory of the process that logs).
    """
    uri = uri or tracking_uri()
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if is_sqlite_store(uri):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return c.create_experiment(name, artifact_location=location)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}``."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


# --- the process that owns a run: a RUNNING run whose process is gone was killed -----------
PROCESS_TAG = "dgm.process"  # "<host> <pid> <start time in clock ticks since boot>"
STAGE_TAGS = ("dgm.stage", "dgm.model")  # what names a stage's runs within an experiment


def this_process() -> str | None:
    """The :data:`PROCESS_TAG` value of this process (None where ``/proc`` is missing)."""
    started = process_start_ticks(os.getpid())
    return None if started is None else f"{socket.gethostname()} {os.getpid()} {started}"


def is_gone(owner: str) -> bool:
    """A :data:`PROCESS_TAG` names a process of this host that no longer runs (a process
    of another host, or an unreadable tag, is never called gone)."""
    try:
        host, pid, started = owner.split()
        if host != socket.gethostname():
            return False
        return process_start_ticks(int(pid)) != started
    except ValueError:
        return False


def close_stale_runs(c: MlflowClient, exp_id: str, tags: Mapping[str, str]) -> list[str]:
    """Mark KILLED the RUNNING runs of this stage (same :data:`STAGE_TAGS`) whose process,
    on this host, is gone (a SIGKILLed ``dvc repro``), and their RUNNING child runs; return
    their ids."""
    clauses = ["attributes.status = 'RUNNING'",
               f"tags.`{PROCESS_TAG}` LIKE '{socket.gethostname()} %'"]
    clauses += [f"tags.`{k}` = '{tags[k]}'" for k in STAGE_TAGS if k in tags]
    stale = [r for r in c.search_runs([exp_id], " and ".join(clauses), max_results=1000)
             if "mlflow.parentRunId" not in r.data.tags and is_gone(r.data.tags[PROCESS_TAG])]
    closed = []
    for run in stale:
        children = c.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}' "
                                 "and attributes.status = 'RUNNING'", max_results=10_000)
        for r in [run, *children]:
            c.set_tag(r.info.run_id, "dgm.end_reason",
                      "its process ended without closing it (killed); closed by the next run")
            c.set_terminated(r.info.run_id, status="KILLED")
            closed.append(r.info.run_id)
    return closed


@timed("mlflow")
def start_run(
    experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
    uri: str | None = None,
) -> str:
    """Create a run with flattened params and tags, owned by this process; return its id.
    A top-level run first closes its stage's stale runs (:func:`close_stale_runs`)."""
    uri = uri or tracking_uri()
    exp_id = ensure_experiment(experiment, uri)
    c = client(uri)
    if "mlflow.parentRunId" not in tags:
        close_stale_runs(c, exp_id, tags)
    owner = this_process()
    run = c.create_run(exp_id, run_name=run_name,
                       tags={**tags, **({PROCESS_TAG: owner} if owner else {})})
    flat = flatten(params)
    items = list(flat.items())
    for start in range(0, len(items), 100):
        c.log_batch(
            run.info.run_id,
            params=[mlflow.entities.Param(k, v[:6000]) for k, v in items[start : start + 100]],
        )
    return run.info.run_id


def reported_unreachable(method):
    """``method`` of a :class:`RunLogger`, with a tracking server that stopped answering
    mid-run reported as one :class:`TrackingUnreachable` line (MLflow wraps the connection
    error of its HTTP client in an ``MlflowException`` "… failed with exception …")."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except mlflow.exceptions.MlflowException as exc:
            if "failed with exception" not in str(exc):
                raise
            raise TrackingUnreachable(f"cannot reach the MLflow tracking server at {self.uri}: "
                                      f"{short_reason(exc)}") from None
    return wrapper


class RunLogger:
    """Logs metrics, images and files to one run by id (usable from any process)."""

    def __init__(self, run_id: str, uri: str):
        self.run_id = run_id
        self.uri = uri
        self.client = client(uri)

    @reported_unreachable
    def failure_reason(self) -> str | None:
        """The ``dgm.failure_reason`` tag a worker set on the run, if any."""
        return self.client.get_run(self.run_id).data.tags.get("dgm.failure_reason")

    @timed("mlflow")
    @reported_unreachable
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [mlflow.entities.Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    @timed("mlflow")
    @reported_unreachable
    def log_png(self, image: np.ndarray, artifact_file: str, key: str | None = None,
                step: int | None = None) -> None:
        """Log a uint8 (H, W, C) image as a PNG artifact; with ``key``, also as MLflow's
        image ``key`` at ``step`` (what the UI's step slider shows)."""
        from dgm.images import save_png

        with tempfile.TemporaryDirectory() as tmp:
            path = save_png(image, Path(tmp) / Path(artifact_file).name)
            self.log_file(path, str(Path(artifact_file).parent).strip("."))
        if key is not None:
            self.client.log_image(self.run_id, image, key=key, step=step or 0)

    @timed("mlflow")
    @reported_unreachable
    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path or None)

    @timed("mlflow")
    def log_lines(self, series: Mapping[str, tuple[list, list]], artifact_file: str,
                  xlabel: str, ylabel: str | None = None, **style: Any) -> None:
        """Log a PNG line plot, one line per ``{label: (x, y)}`` (legend when any)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        legend_size = style.pop("legend_fontsize", None)
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, (x, y) in series.items():
            ax.plot(x, y, label=label, **style)
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        if series:
            ax.legend(fontsize=legend_size)
        fig.tight_layout()
        with tempfile.TemporaryDirectory() as tmp:  # never into a stage's DVC output folder
            path = Path(tmp) / Path(artifact_file).name
            fig.savefig(path)
            self.log_file(path, str(Path(artifact_file).parent).strip("."))
        plt.close(fig)

    @timed("mlflow")
    @reported_unreachable
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    @timed("mlflow")
    @reported_unreachable
    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.client.set_tag(self.run_id, "dgm.failure_reason", reason[:5000])
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(
            getattr(RunStatus, status)))


# --- studies: one parent run, one child run per trial ---------------------------------------
def _child_filter(parent_run_id: str, key_tags: Mapping[str, str]) -> str:
    clauses = [f"tags.`mlflow.parentRunId` = '{parent_run_id}'"]
    clauses += [f"tags.`{k}` = '{v}'" for k, v in key_tags.items()]
    return " and ".join(clauses)


def child_runs(experiment: str, parent_run_id: str, uri: str,
               key_tags: Mapping[str, str] | None = None) -> list:
    """The child runs of ``parent_run_id`` (those tagged ``key_tags``), oldest first."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], _child_filter(parent_run_id, key_tags or {}),
                         max_results=10_000, order_by=["attribute.start_time ASC"])
    return list(runs)


@timed("mlflow")
def start_child_run(experiment: str, parent_run_id: str, run_name: str,
                    key_tags: Mapping[str, str], params: Mapping[str, Any],
                    tags: Mapping[str, str], uri: str) -> str:
    """The child run of ``parent_run_id`` identified by ``key_tags``: created on the first
    attempt, reopened (``dgm.attempts`` counted) when a trial is retried or resumed."""
    existing = child_runs(experiment, parent_run_id, uri, key_tags)
    if existing:
        run = existing[0]
        c = client(uri)
        c.update_run(run.info.run_id, status="RUNNING")
        attempts = int(run.data.tags.get("dgm.attempts", "1")) + 1
        for key, value in {**tags, "dgm.attempts": str(attempts)}.items():
            c.set_tag(run.info.run_id, key, str(value))
        return run.info.run_id
    return start_run(experiment, run_name, params,
                     {**tags, **key_tags, "mlflow.parentRunId": parent_run_id,
                      "dgm.attempts": "1"}, uri=uri)


@timed("mlflow")
def end_child_run(experiment: str, parent_run_id: str, key_tags: Mapping[str, str],
                  status: str, reason: str | None, uri: str) -> str | None:
    """End the child run (if it is still RUNNING) with ``status``; return its id."""
    for run in child_runs(experiment, parent_run_id, uri, key_tags):
        if run.info.status == "RUNNING":
            logger = RunLogger(run.info.run_id, uri)
            if status != "FAILED" and reason:
                logger.set_tags({"dgm.end_reason": reason})
            logger.end(status, reason if status == "FAILED" else None)
        return run.info.run_id
    return None


def last_logged_step(run_id: str, uri: str) -> int:
    """The highest step of run ``run_id``'s metrics (0 when none was logged)."""
    c = client(uri)
    keys = sorted(c.get_run(run_id).data.metrics)
    return max((m.step for m in c.get_metric_history(run_id, keys[0])), default=0) if keys else 0


def reopen_run(run_id: str, uri: str) -> None:
    """Mark a run RUNNING again, owned by this process (a resumed run)."""
    c = client(uri)
    c.update_run(run_id, status="RUNNING")
    owner = this_process()
    if owner:
        c.set_tag(run_id, PROCESS_TAG, owner)
