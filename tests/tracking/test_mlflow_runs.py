"""MLflow runs against a real SQLite store: a run whose process was killed is closed as
KILLED by the next run of its stage."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from dgm.tracking.mlflow_runs import (
    PROCESS_TAG,
    is_gone,
    reopen_run,
    start_child_run,
    start_run,
    this_process,
)

pytestmark = pytest.mark.skipif(this_process() is None,
                                reason="needs Linux /proc to identify processes")
GAN = {"dgm.stage": "train", "dgm.model": "gan"}
OWNER = """
import sys, time
from dgm.tracking.mlflow_runs import start_child_run, start_run
uri, model = sys.argv[1], sys.argv[2]
run = start_run("dgm-test", "killed", {}, {"dgm.stage": "train", "dgm.model": model}, uri=uri)
child = start_child_run("dgm-test", run, "trial", {"dgm.trial": "0"}, {}, {}, uri)
print(run, child, flush=True)
time.sleep(600)
"""


def killed_run(uri: str, model: str) -> tuple[str, str]:
    """(run id, child run id) left RUNNING by a process that was then SIGKILLed."""
    proc = subprocess.Popen([sys.executable, "-c", OWNER, uri, model], stdout=subprocess.PIPE,
                            text=True)
    try:
        run, child = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return run, child


def test_the_next_run_of_a_stage_closes_the_runs_whose_process_was_killed(tracking_uri):
    killed, killed_child = killed_run(tracking_uri, "gan")
    other_stage, _ = killed_run(tracking_uri, "vae")
    live = start_run("dgm-test", "live", {}, GAN, uri=tracking_uri)  # this process: alive
    c = MlflowClient(tracking_uri)
    assert c.get_run(killed).info.status == "KILLED"  # `live` was the next train@gan run
    assert c.get_run(killed_child).info.status == "KILLED"
    assert "killed" in c.get_run(killed).data.tags["dgm.end_reason"]
    assert c.get_run(other_stage).info.status == "RUNNING"  # another stage's: its own next run
    start_run("dgm-test", "next", {}, GAN, uri=tracking_uri)
    assert c.get_run(live).info.status == "RUNNING"  # its process still runs
    assert c.get_run(live).data.tags[PROCESS_TAG] == this_process()


def test_a_resumed_run_belongs_to_the_resuming_process(tracking_uri):
    killed, _ = killed_run(tracking_uri, "gan")
    reopen_run(killed, tracking_uri)  # what `dgm train --resume` does
    start_run("dgm-test", "next", {}, GAN, uri=tracking_uri)
    run = MlflowClient(tracking_uri).get_run(killed)
    assert run.info.status == "RUNNING" and run.data.tags[PROCESS_TAG] == this_process()


@pytest.mark.parametrize(("owner", "gone"), [
    ("another-host 1 1", False), ("garbage", False), (None, False)])
def test_only_processes_of_this_host_are_judged(owner, gone):
    mine = this_process()
    if owner is None:  # this process, but started at another time: a reused pid
        host, pid, started = mine.split()
        owner, gone = f"{host} {pid} {int(started) + 1}", True
    assert is_gone(owner) is gone
    assert is_gone(mine) is False


def test_child_runs_never_close_their_siblings(tracking_uri):
    parent = start_run("dgm-test", "study", {}, {"dgm.stage": "tune", "dgm.model": "gan"},
                       uri=tracking_uri)
    first = start_child_run("dgm-test", parent, "t0", {"dgm.trial": "0"}, {}, {}, tracking_uri)
    start_child_run("dgm-test", parent, "t1", {"dgm.trial": "1"}, {}, {}, tracking_uri)
    assert MlflowClient(tracking_uri).get_run(first).info.status == "RUNNING"
