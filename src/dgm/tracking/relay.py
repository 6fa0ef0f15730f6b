"""MLflow calls made on behalf of Ray workers, by run id, so that only reachable stores are
logged to: a worker calls :class:`Tracking` directly when it can reach the store (an HTTP
server, or a one-machine Ray beside the SQLite file), else through an actor on the driver's
node, which always can (:func:`worker_tracking`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dgm.tracking.mlflow_runs import RunLogger, start_child_run


class Tracking:
    """The MLflow store at ``uri``, addressed by run id (picklable: only the URI travels)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._loggers: dict[str, RunLogger] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"])

    def _run(self, run_id: str) -> RunLogger:
        if run_id not in self._loggers:
            self._loggers[run_id] = RunLogger(run_id, self.uri)
        return self._loggers[run_id]

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        self._run(run_id).log_metrics(metrics, step=step)

    def log_png(self, run_id: str, image: np.ndarray, artifact_file: str,
                key: str | None = None, step: int | None = None) -> None:
        self._run(run_id).log_png(image, artifact_file, key=key, step=step)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._run(run_id).set_tags(tags)

    def end(self, run_id: str, status: str, reason: str | None = None) -> None:
        self._run(run_id).end(status, reason)

    def start_child_run(self, experiment: str, parent_run_id: str, run_name: str,
                        key_tags: Mapping[str, str], params: Mapping[str, Any],
                        tags: Mapping[str, str]) -> str:
        return start_child_run(experiment, parent_run_id, run_name, key_tags, params, tags,
                               self.uri)


def is_remote_store(uri: str) -> bool:
    """An HTTP(S) tracking server: reachable from any node that reaches the network."""
    return uri.startswith(("http://", "https://", "databricks"))


def worker_tracking(uri: str):
    """What Ray workers log through (Ray must be initialised): :class:`Tracking` itself for
    a remote store or a one-machine Ray, else a proxy to one on the driver's node."""
    from dgm.cluster import on_driver_node, single_node

    if is_remote_store(uri) or single_node():
        return Tracking(uri)
    return on_driver_node(Tracking, uri)
