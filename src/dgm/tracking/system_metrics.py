"""MLflow's system metrics for runs dgm creates by id (``mlflow.start_run`` is not used, so
its own switch would never take effect)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator


@contextlib.contextmanager
def system_metrics(run_id: str, uri: str, resume: bool = False) -> Iterator[bool]:
    """Log this machine's ``system/…`` metrics (CPU, memory, disk, network, GPU) to
    ``run_id`` during the block when MLflow's switch is on — ``MLFLOW_ENABLE_SYSTEM_METRICS_
    LOGGING=true`` or ``mlflow.enable_system_metrics_logging()`` — as ``mlflow.start_run``
    does; its sampling settings (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, …) apply.
    ``resume``: continue the steps of a resumed run. Yields whether it is on."""
    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING

    if not MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get():
        yield False
        return
    if importlib.util.find_spec("psutil") is None:
        from dgm.errors import DgmError

        raise DgmError("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is set, but system metrics need "
                       "the psutil package (pip install psutil)")
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=uri)
    monitor.start()
    try:
        yield True
    finally:
        monitor.finish()
