"""Shared fixtures: one Ray instance per session, prepared digits, the MNIST mirror."""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


# --- scheduling over two pytest-xdist workers (pyproject: -n 2) ------------------------------
RAY_GROUP = "ray"
# The longest groups, queued first and in this order so that the two workers finish
# together: worker 1 takes MNIST then the `dvc repro` pipeline, worker 2 the session's Ray
# then Fashion-MNIST (each about 5 + 4 min on one core); the short modules fill in after.
FIRST = ("tests/integration/test_evaluator_acceptance.py", RAY_GROUP,
         "tests/integration/test_pipeline.py", "tests/integration/test_fashion_evaluator.py")
# What a user reads as trouble in a successful run's output (issue 18).
TROUBLE = re.compile(r"Traceback|Error|WARNING|Warning:")
# A line Ray forwards from one of its worker processes: "(ShardWriter pid=12) …"
RAY_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+(, ip=[\d.]+)?\)")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def pytest_configure(config):
    """A pytest-xdist worker computes on one thread (torch, BLAS, and the processes it
    starts): two workers on two cores, never more threads than cores. Oversubscribed OpenMP
    threads spin against each other and against Ray's processes (Ray tests ran 2-7x slower
    beside a two-thread training)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.update(ONE_THREAD)
    # Every Ray a test starts is its own: never join another test process's Ray (the
    # isolated-cluster tests name their head in RAY_ADDRESS explicitly).
    os.environ["RAY_ADDRESS"] = "local"


@functools.cache
def work_group(module: str) -> str:
    """The xdist work unit of a test module: ``ray`` for every module that uses the session's
    Ray (one Ray per test session, so all of them on one worker), else the module itself
    (its module-scoped fixtures then run once)."""
    source = REPO / module
    return RAY_GROUP if source.is_file() and "ray_session" in source.read_text() else module


def pytest_xdist_make_scheduler(config, log):
    """Work units by :func:`work_group`, sent in collection order (longest first)."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_group(nodeid.split("::", 1)[0])

    return WorkGroups(config, log)


def pytest_collection_modifyitems(config, items):
    """The longest work groups first (:data:`FIRST`), the rest in collection order."""
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(work_group(item.nodeid.split("::", 1)[0]), len(FIRST)))


def mnist_mirror() -> Path | None:
    """``$DGM_DATA_DIR`` or ``../shared/datasets`` when it holds the MNIST IDX files."""
    for candidate in (os.environ.get("DGM_DATA_DIR"), SHARED_DATASETS):
        if candidate and (Path(candidate) / "mnist" / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def mirror_dir() -> Path:
    """The local IDX mirror; tests needing it skip with a reason when it is absent."""
    path = mnist_mirror()
    if path is None:
        pytest.skip("MNIST IDX files not found: set DGM_DATA_DIR to a mirror such as "
                    "../shared/datasets")
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) for the whole test session, with its dashboard: Ray
    Train V2 frees a finished run's placement group through the State API, and without it
    the next run in the session (a Tune trial) waits forever for the leaked CPUs."""
    import ray

    from dgm.cluster import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The digits dataset prepared to Parquet once per session."""
    from dgm.data.parquet import write_dataset
    from dgm.data.sources import load_raw

    out = tmp_path_factory.mktemp("data") / "digits"
    write_dataset(load_raw("digits", []), out, val_fraction=0.1, test_fraction=0.2, seed=0,
                  shard_rows=500)
    return out


# The session's evaluator: the `evaluator` stage once on digits (10 epochs, lr 3e-3; about
# 95 % test accuracy), shared by every module that needs a trained one.
EVALUATOR_PARAMS = {"evaluator": {"epochs": 10, "batch_size": 32, "lr": 3e-3, "patience": 10},
                    "evaluate": {"metric_options": {"kid_subsets": 10}}}


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def committed_copy(dest: Path) -> Path:
    """A copy of the repository's committed files at ``dest`` (no data, no artifacts)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def digits_project(root: Path, digits_dir: Path, evaluator: Path | None = None) -> Path:
    """A project at ``root``: a stub dvc.yaml, the session's prepared digits (a link) and,
    given ``evaluator``, a copy of that trained evaluator's directory."""
    data = root / "artifacts" / "data" / "digits"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.symlink_to(digits_dir, target_is_directory=True)
    if not (root / "dvc.yaml").exists():
        (root / "dvc.yaml").write_text("stages: {}\n")
    if evaluator is not None:
        shutil.copytree(evaluator, root / "artifacts" / "evaluator" / "digits")
    return root


@pytest.fixture(scope="session")
def digits_evaluator(tmp_path_factory, digits_dir) -> tuple[Path, dict]:
    """The `evaluator` stage run once per session on digits (:data:`EVALUATOR_PARAMS`, its
    own MLflow store): (its output directory, the metrics it returned)."""
    from dgm.config import Params
    from dgm.stages.evaluator import run

    root = digits_project(tmp_path_factory.mktemp("evaluator-project"), digits_dir)
    with environment(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}"):
        metrics = run(Params.model_validate(EVALUATOR_PARAMS), root=root)
    return root / "artifacts" / "evaluator" / "digits", metrics


@pytest.fixture()
def single_torch_thread():
    """One intra-op torch thread for the test: tiny models run faster (and reproducibly) that
    way, above all when the cores are busy and OpenMP threads spin against other processes."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store for one test, exported as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until ``url`` answers 200; fail with the process's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{url} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextmanager
def server_process(command: list[str], ready_url: str, log: Path, env: dict[str, str],
                   cwd: Path | None = None, timeout: float = 120) -> Iterator[subprocess.Popen]:
    """Run the server ``command`` (in a process group of its own, yielded) for the block,
    entered once ``ready_url`` answers 200.

    Its executables (``uvicorn`` for MLflow) come from this interpreter's environment,
    activated or not; the log goes to ``log``."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
        env={**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                            f"{os.environ.get('PATH', '')}"}, start_new_session=True)
    try:
        wait_for_http(ready_url, process, log, timeout)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with suppress(ProcessLookupError):  # what it started (e.g. uvicorn's workers)
            os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def mlflow_server(directory: Path, artifacts: str | None = None,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 at a free port: SQLite backend store under
    ``directory``, artifacts proxied over HTTP to ``artifacts`` (default: a directory under
    ``directory``; an ``s3://`` URI with ``env``'s AWS settings). Yields its URI."""
    with mlflow_server_process(directory, artifacts, env) as (uri, _):
        yield uri


@contextmanager
def mlflow_server_process(directory: Path, artifacts: str | None = None,
                          env: dict[str, str] | None = None
                          ) -> Iterator[tuple[str, subprocess.Popen]]:
    """:func:`mlflow_server`, yielding (its URI, its process: the leader of its group)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
               "--artifacts-destination", artifacts or str(directory / "mlartifacts")]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **(env or {})}
    if "AWS_ENDPOINT_URL" in env:  # MLflow's S3 client reads its own variable
        env["MLFLOW_S3_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL"]
    with server_process(command, f"{uri}/health", directory / "server.log", env,
                        directory) as process:
        yield uri, process


@pytest.fixture(scope="module")
def mlflow_server_uri(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server for the tests of one module (see :func:`mlflow_server`)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
