"""MLflow's system metrics on the runs dgm creates by id."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from dgm.tracking.mlflow_runs import start_run
from dgm.tracking.system_metrics import system_metrics


def test_mlflows_switch_turns_system_metrics_on_for_a_dgm_run(tracking_uri, monkeypatch):
    run_id = start_run("dgm-test", "sys", {}, {}, uri=tracking_uri)
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    with system_metrics(run_id, tracking_uri) as on:
        time.sleep(0.3)
    assert on is False
    assert not MlflowClient(tracking_uri).get_run(run_id).data.metrics  # off by default

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with system_metrics(run_id, tracking_uri) as on:
        time.sleep(1.0)
    metrics = MlflowClient(tracking_uri).get_run(run_id).data.metrics
    assert on is True
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0
    steps = [m.step for m in MlflowClient(tracking_uri).get_metric_history(
        run_id, "system/cpu_utilization_percentage")]
    with system_metrics(run_id, tracking_uri, resume=True):  # a resumed run continues
        time.sleep(0.5)
    resumed = [m.step for m in MlflowClient(tracking_uri).get_metric_history(
        run_id, "system/cpu_utilization_percentage")]
    assert len(resumed) > len(steps) and min(resumed[len(steps):]) > max(steps)
