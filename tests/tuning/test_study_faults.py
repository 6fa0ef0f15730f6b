"""A study that loses its driver: `--resume` finishes only the unfinished trials. (Losing a
node is tested on nodes that share no disk: tests/integration/test_isolated_cluster.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dgm.config import Params
from dgm.stages.layout import Layout
from dgm.stages.tune import run as tune
from dgm.tracking.mlflow_runs import tracking_uri

from .conftest import second_driver_env, study_params

pytestmark = pytest.mark.integration


def children(client: MlflowClient, parent_run_id: str) -> list:
    exp = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_resume_after_the_driver_is_killed(ray_session, tune_project, tmp_path):
    params = study_params(num_samples=3, epochs=2, scheduler="fifo", searcher="random",
                          num_workers=1, cpus_per_worker=1)  # resume needs no DDP
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    lay = Layout(tune_project, "digits")
    pointer = lay.study_pointer("gan")
    pointer.unlink(missing_ok=True)
    env = second_driver_env(MLFLOW_TRACKING_URI=tracking_uri(tune_project))
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "dgm.cli", "tune", "--model", "gan", "--params",
         str(params_file)], cwd=tune_project, env=env, start_new_session=True,
        stdout=open(log, "w"), stderr=subprocess.STDOUT)
    client = MlflowClient(tracking_uri(tune_project))

    def two_finished():
        assert driver.poll() is None, log.read_text()[-3000:]
        runs = [c for c in children(client, parent) if c.info.status == "FINISHED"]
        return runs if len(runs) >= 2 else None

    try:
        parent = wait_for(lambda: pointer.is_file() and json.loads(pointer.read_text()),
                          120, "the study to start")["parent_run_id"]
        done = wait_for(two_finished, 400, "two finished trials")
        time.sleep(3)  # the study's state is saved every second
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished = {c.data.tags["dgm.trial_id"]: c.info.end_time for c in done}
    assert len(children(client, parent)) < 3 or any(
        c.info.status == "RUNNING" for c in children(client, parent))  # one left to resume

    record = tune(Params.model_validate(params), "gan", root=tune_project, resume=True)
    assert record["parent_run_id"] == parent
    table = pq.read_table(lay.tune_dir("gan") / "results.parquet").to_pylist()
    assert len(table) == 3 and {row["status"] for row in table} == {"TERMINATED"}
    assert all(row["epochs"] == 2 for row in table)
    runs = {c.data.tags["dgm.trial_id"]: c for c in children(client, parent)}
    assert len(runs) == 3 and {c.info.status for c in runs.values()} == {"FINISHED"}
    for trial_id, end_time in finished.items():  # not run again
        assert runs[trial_id].data.tags["dgm.attempts"] == "1"
        assert runs[trial_id].info.end_time == end_time
    assert client.get_run(parent).info.status == "FINISHED"
