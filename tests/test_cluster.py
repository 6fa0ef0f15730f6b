"""The Ray boundary (``dgm.cluster``): the private Ray APIs it relies on are pinned to the
installed Ray version, so an upgrade that moves them fails here, loudly, by name."""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

import pytest
import ray

from dgm import cluster
from dgm.errors import DgmError


def test_ray_is_the_version_whose_internals_were_checked():
    assert ray.__version__ == cluster.CHECKED_RAY_VERSION, (
        f"Ray {ray.__version__} is installed but dgm.cluster's private APIs were checked "
        f"against {cluster.CHECKED_RAY_VERSION}: re-check the tests below, then bump "
        "CHECKED_RAY_VERSION")


def test_the_train_session_still_exposes_the_trial_stop_event():
    """``abort_train_run_when_stopped`` waits on ``get_session().stop_event``."""
    session = importlib.import_module("ray.train._internal.session")
    assert callable(session.get_session)
    source = inspect.getsource(session)
    assert "stop_event" in source


def test_tune_report_callback_still_holds_its_queue_actor():
    """``abort_train_run_when_stopped`` kills ``TuneReportCallback._training_actor_item_queue``
    (a ``ray.util.queue.Queue`` whose ``actor`` is what it kills)."""
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.util.queue import Queue

    source = inspect.getsource(TuneReportCallback)
    assert "_training_actor_item_queue" in source
    assert "self.actor" in inspect.getsource(Queue.__init__)


def test_train_v2_context_module_still_logs_reports():
    """``quiet_reports`` silences the logger named after this module's file."""
    context = importlib.import_module("ray.train.v2._internal.execution.context")
    assert Path(context.__file__).is_file()


def test_the_token_notice_still_comes_from_its_logger():
    """``start_local_ray`` quietens the notice by the logger of the module that logs it."""
    setup = importlib.import_module(cluster.TOKEN_NOTICE_LOGGER)
    assert "Token authentication is enabled" in inspect.getsource(setup)
    assert "getLogger(__name__)" in inspect.getsource(setup)


def test_the_state_api_still_reads_its_address_from_the_environment():
    """Ray Train's placement-group cleaner asks the State API without an address; it then
    reads RAY_API_SERVER_ADDRESS, which ``start_local_ray`` gives every worker."""
    from ray.dashboard.utils import get_address_for_submission_client
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    assert "is_actor_alive(" in inspect.getsource(placement_group_cleaner)
    assert "RAY_API_SERVER_ADDRESS" in inspect.getsource(
        importlib.import_module("ray._private.ray_constants"))
    os.environ["RAY_API_SERVER_ADDRESS"] = "http://127.0.0.1:1"
    try:
        assert get_address_for_submission_client(None) == "http://127.0.0.1:1"
    finally:
        del os.environ["RAY_API_SERVER_ADDRESS"]


def test_a_workers_state_api_call_reaches_its_own_ray(ray_session):
    """A State API call without an address, made in a worker of the session's Ray
    (``start_local_ray``), reaches that Ray's dashboard (not whatever /tmp/ray names)."""
    import ray

    @ray.remote(num_cpus=0)
    def ask() -> tuple[str | None, list[str]]:
        from ray.util.state import list_nodes

        return (os.environ.get("RAY_API_SERVER_ADDRESS"),
                [n.node_id for n in list_nodes(timeout=10)])

    address, nodes = ray.get(ask.remote(), timeout=60)
    assert address.startswith("http://127.0.0.1:")
    assert nodes == [ray.get_runtime_context().get_node_id()]


def test_the_environment_settings_are_still_read_by_ray():
    """The variables dgm sets are still the ones Ray Train and Tune read."""
    import ray.train.v2._internal.constants as train_constants
    import ray.tune.trainable.function_trainable as function_trainable

    train_source = inspect.getsource(train_constants)
    for name in [*cluster.train_environment(0.1), "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"]:
        assert name in train_source, name  # the watcher: off in a Ray dgm starts
    assert "TUNE_FUNCTION_THREAD_TIMEOUT_S" in inspect.getsource(function_trainable)


def test_root_cause_is_the_last_error_line():
    error = RuntimeError("Traceback ...\n  File x\nValueError: the real reason\n\n")
    assert cluster.root_cause(error) == "ValueError: the real reason"
    assert cluster.root_cause(RuntimeError("")) == "RuntimeError"


def test_one_merged_resource_check(ray_session):
    cpus = ray_session.cluster_resources()["CPU"]
    cluster.check_resources(workers=2, cpus_per_worker=cpus / 2, what="fits")
    with pytest.raises(DgmError, match=rf"^w: {cpus + 1:g} CPUs needed, but the Ray cluster "
                                       rf"has {cpus:g}$"):
        cluster.check_resources(workers=1, cpus_per_worker=1, driver_cpus=cpus, what="w")
    if ray_session.cluster_resources().get("GPU", 0) == 0:
        with pytest.raises(DgmError, match="GPU each"):
            cluster.check_resources(workers=1, cpus_per_worker=1, use_gpu=True, what="g")
    assert cluster.concurrency(cpus / 2, 5, "x") == 2
    assert cluster.concurrency(cpus, 1, "x") == 1
