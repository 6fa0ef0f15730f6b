"""Train and generate on Ray nodes that share nothing with the driver but the network
(``tests/harness.py``): worker nodes in their own mount namespaces see neither the checkout's
source nor the project, the data or the tests' files; checkpoints go to a real S3 API
(moto); MLflow is the driver's default SQLite file, reached by the workers through the
driver's node. Every command is the real ``dgm`` CLI with ``RAY_ADDRESS`` at the head."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
import yaml
from harness import BUCKET, IsolatedCluster, unshare_available
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def hidden_paths(basetemp: Path) -> list[Path]:
    """What the worker nodes must not see: the checkout's source, artifacts and data, the
    IDX mirror, every pytest temporary directory (the projects), and this machine's Ray
    session directories."""
    pytest_root = next((p for p in [basetemp, *basetemp.parents]
                        if p.name.startswith("pytest-of-")), basetemp)
    candidates = [REPO / "src", REPO / "artifacts", REPO / "data", pytest_root,
                  Path(tempfile.gettempdir()) / "ray"]
    if os.environ.get("DGM_DATA_DIR"):
        candidates.append(Path(os.environ["DGM_DATA_DIR"]))
    return [p.resolve() for p in candidates if p.is_dir()]


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    reason = unshare_available()
    if reason:
        pytest.skip(f"isolated Ray nodes need private mount namespaces: {reason}")
    logs = tmp_path_factory.mktemp("cluster-logs")
    cluster = IsolatedCluster(hidden=hidden_paths(tmp_path_factory.getbasetemp()), logs=logs)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory, digits_dir):
    from conftest import digits_project

    root = digits_project(tmp_path_factory.mktemp("cluster-project"), digits_dir)
    params = {
        "models": {"gan": {"width": 8, "latent_dim": 8}},
        "train": {"epochs": 2, "batch_size": 64, "num_workers": 2, "cpus_per_worker": 1,
                  "sample_every": 1, "max_failures": 0},
        "cluster": {"storage": f"s3://{BUCKET}/ray"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def dgm(isolated, project: Path, *args: str, params: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a driver of the isolated cluster, in ``project`` (its own SQLite store)."""
    params_file = project / "params.yaml"
    if params is not None:
        params_file = project / "params-variant.yaml"
        base = yaml.safe_load((project / "params.yaml").read_text())
        params_file.write_text(yaml.safe_dump({**base, **params}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(isolated.env)
    return subprocess.run([sys.executable, "-m", "dgm.cli", *args, *(
        ["--params", str(params_file)] if args[0] in ("train", "tune") else [])],
        cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(isolated, project):
    done = dgm(isolated, project, "train", "--model", "gan")
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load((project / "artifacts/models/digits/gan/run.json").read_text())


def test_ddp_training_on_isolated_nodes_checkpoints_to_s3_and_logs_to_the_drivers_store(
        isolated, project, trained):
    assert (project / "artifacts/models/digits/gan/generator.pt").is_file()
    s3 = boto3.client("s3", endpoint_url=isolated.env["AWS_ENDPOINT_URL"],
                      region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    keys = [o["Key"] for o in s3.list_objects_v2(
        Bucket=BUCKET, Prefix=f"ray/{trained['run_name']}/").get("Contents", [])]
    assert sum(k.endswith("/checkpoint.pt") for k in keys) == 2  # checkpoints_to_keep: 2
    assert not (project / "artifacts/ray_results" / trained["run_name"]).exists()

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_g")] == [1, 2]
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert grids == {"samples/epoch_0001.png", "samples/epoch_0002.png"}
    # the workers were on the isolated nodes: the head has no CPUs
    assert isolated.alive_workers() == 2


def test_generation_with_two_actors_on_the_nodes_equals_one_in_process(isolated, project,
                                                                       trained):
    tables = {}
    for workers in (1, 2):
        out = project / f"samples-{workers}.parquet"
        done = dgm(isolated, project, "generate", "--model-uri", trained["model_uri"],
                   "--num-samples", "300", "--shard-size", "100", "--batch-size", "50",
                   "--workers", str(workers), "--output", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        assert sorted(p.name for p in out.iterdir()) == [
            "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        tables[workers] = pq.read_table(out)
    assert tables[1].num_rows == 300 and tables[2].equals(tables[1])


def test_storage_the_nodes_cannot_see_is_refused_in_one_line(isolated, project):
    local = project / "driver-only"
    for variant, expected in [
        ({"cluster": {"storage": None}}, "cluster.storage is null but the Ray cluster has 3 nodes"),
        ({"cluster": {"storage": str(local)}},
         f"cluster.storage {local} is not visible on node(s) 127.0.0.2, 127.0.0.3"),
    ]:
        done = dgm(isolated, project, "train", "--model", "gan", params=variant, timeout=120)
        assert done.returncode != 0
        # (Ray also streams its GCS's own error lines to every driver: not ours to print)
        lines = [line for line in done.stderr.strip().splitlines()
                 if line.strip() and not line.startswith("(pid=gcs_server)")]
        assert len(lines) == 1 and expected in lines[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr


def test_resume_after_the_driver_is_killed_continues_from_the_s3_checkpoint(
        isolated, project, tmp_path):
    """``dgm train --model vae``, its data streamed by Ray Data from the bucket and its
    tracking an HTTP ``mlflow server`` whose artifacts go to the bucket, is SIGKILLed once two
    checkpoints are in the bucket; the workers go with it; ``--resume`` finds the run in S3
    and trains only the later epochs."""
    from conftest import mlflow_server

    from dgm.cluster import directory_digest

    with mlflow_server(tmp_path / "mlflow", artifacts=f"s3://{BUCKET}/mlflow",
                       env=isolated.env) as uri:
        killed_and_resumed(isolated, project, uri)
    # the workers streamed the splits from the bucket: one copy, named by its content
    s3 = boto3.client("s3", endpoint_url=isolated.env["AWS_ENDPOINT_URL"],
                      region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    digest = directory_digest(project / "artifacts/data/digits")
    copied = [o["Key"] for o in s3.list_objects_v2(
        Bucket=BUCKET, Prefix="ray/datasets/").get("Contents", [])]
    assert f"ray/datasets/{digest}/_COMPLETE" in copied
    assert {k.split("/")[3] for k in copied if k.endswith(".parquet")} == {"train", "val", "test"}
    history = list(csv.DictReader(open(project / "artifacts/models/digits/vae/history.csv")))
    # 1294 train rows, 64 a batch: 20 steps an epoch
    assert [int(float(r["step"])) for r in history] == [20, 40, 60]
    # the sample grids went through the tracking server into the bucket
    grids = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/").get(
        "Contents", []) if "/samples/epoch_" in o["Key"]]
    assert sorted(k.rsplit("/", 1)[1] for k in grids) == [
        "epoch_0001.png", "epoch_0002.png", "epoch_0003.png"]


def killed_and_resumed(isolated, project: Path, uri: str) -> None:
    """The VAE run of the resume test, tracked at ``uri``: killed, resumed, checked."""
    import signal
    import time

    params_file = project / "params-vae.yaml"
    base = yaml.safe_load((project / "params.yaml").read_text())
    base["models"] = {"vae": {"width": 8, "latent_dim": 4}}
    # Two workers, one per node, hold every CPU: Ray Data's read tasks need none.
    base["train"] = {**base["train"], "epochs": 3, "ingest": "stream", "num_workers": 2}
    params_file.write_text(yaml.safe_dump(base))
    env = {**os.environ, **isolated.env, "MLFLOW_TRACKING_URI": uri}
    command = [sys.executable, "-m", "dgm.cli", "train", "--model", "vae", "--params",
               str(params_file)]
    driver = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    s3 = boto3.client("s3", endpoint_url=isolated.env["AWS_ENDPOINT_URL"],
                      region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")

    def checkpoints() -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="ray/digits-vae-"
                                                     ).get("Contents", [])
                if o["Key"].endswith("/checkpoint.pt")]

    deadline = time.monotonic() + 300
    # two in the bucket: the first is then registered by Ray Train too (an uploaded but not
    # yet registered checkpoint is not resumed from)
    while len(checkpoints()) < 2 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert len(checkpoints()) >= 2 and driver.poll() is None, "no checkpoint before the end"
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    done = subprocess.run([*command, "--resume"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = yaml.safe_load((project / "artifacts/models/digits/vae/run.json").read_text())
    assert info["epochs"] == 3
    client = MlflowClient(uri)
    assert client.get_run(info["run_id"]).info.status == "FINISHED"
    # every epoch logged; epoch 1 (checkpointed before the kill) was not trained again
    logged = [m.step for m in client.get_metric_history(info["run_id"], "loss")]
    assert sorted(set(logged)) == [1, 2, 3] and logged.count(1) == 1, logged
    assert {a.path for a in client.list_artifacts(info["run_id"], "samples")} == {
        "samples/epoch_0001.png", "samples/epoch_0002.png", "samples/epoch_0003.png"}


def test_ray_job_submit_of_the_pipeline_script_trains_on_the_isolated_nodes(
        isolated, tmp_path):
    """The README's `ray job submit --working-dir . -- bash pipelines/cluster-run.sh` from a
    copy of the committed project (Ray uploads it without what .gitignore names: no data, no
    artifacts): on the head the job makes the raw data and runs `dvc exp run` up to
    `train@gan`, whose workers run on the isolated nodes and checkpoint to the bucket."""
    from conftest import committed_copy

    project = committed_copy(tmp_path / "job")
    tiny = ["evaluator.epochs=2", "tune.models=[]", "train.epochs=2", "train.num_workers=2",
            "train.cpus_per_worker=1", "train.batch_size=128", "train.max_failures=0",
            "models.gan.width=8", "models.gan.latent_dim=8"]
    env_vars = {"DGM_STORAGE": f"s3://{BUCKET}/job", "PATH": f"{Path(sys.executable).parent}:"
                f"{os.environ['PATH']}",
                "DGM_DVC_ARGS": " ".join(f"-S configs/params.yaml:{s}" for s in tiny)
                + " train@gan"}
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "RAY_ADDRESS")}
    env.update({k: v for k, v in isolated.env.items() if k != "RAY_ADDRESS"})
    submit = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address",
              isolated.env["DGM_TEST_DASHBOARD"], "--working-dir", str(project),
              "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--",
              "bash", "pipelines/cluster-run.sh"]
    done = subprocess.run(submit, cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0 and "succeeded" in done.stdout, (
        done.stdout[-3000:] + done.stderr[-2000:])
    assert "epoch 2/2" in done.stdout  # rank 0's progress, streamed back with the job's logs
    s3 = boto3.client("s3", endpoint_url=isolated.env["AWS_ENDPOINT_URL"],
                      region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="job/digits-gan-"
                                                 ).get("Contents", [])]
    assert sum(k.endswith("/checkpoint.pt") for k in keys) == 2


def test_study_on_isolated_nodes_survives_losing_one_and_resumes_from_s3(
        isolated, project, digits_evaluator):
    """Last in the module: it kills a worker node. Two trials train at once, a 1-CPU Train
    worker each, one per node (the trials' drivers hold no CPU, so after the loss they
    cannot starve each other's workers). Once both have a checkpoint in the bucket and are
    mid-training, one node is killed: the study still completes, and the trial that lost
    its worker continues from its S3 checkpoint on the other node (Ray Train restarts its
    worker group, ``tune.max_failures``): its first epoch is not trained, nor logged, twice."""
    import shutil
    import threading
    import time

    shutil.copytree(digits_evaluator[0], project / "artifacts/evaluator/digits",
                    dirs_exist_ok=True)
    # Long enough that both trials are mid-training at once although their workers start
    # seconds apart (at 6 epochs the first had finished before the second's first epoch).
    epochs = 24
    tune = {"models": ["gan"], "num_samples": 2, "epochs": epochs, "max_concurrent_trials": 2,
            "num_workers": 1, "cpus_per_worker": 1, "trial_cpus": 0, "scheduler": "fifo",
            "searcher": "random", "max_failures": 3, "eval_samples": 100,
            "space": {"gan": {"lr_g": {"loguniform": [1e-4, 1e-3]}}}}
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(done=dgm(
        isolated, project, "tune", "--model", "gan", params={"tune": tune}, timeout=900)))
    runner.start()
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    s3 = boto3.client("s3", endpoint_url=isolated.env["AWS_ENDPOINT_URL"],
                      region_name="us-east-1", aws_access_key_id="test",
                      aws_secret_access_key="test")
    pointer = project / "artifacts/ray_results/.tune/digits-gan.json"

    def both_mid_training() -> bool:
        if not pointer.is_file():
            return False
        study = yaml.safe_load(pointer.read_text())
        keys = [o["Key"] for o in s3.list_objects_v2(
            Bucket=BUCKET, Prefix=f"ray/{study['study']}-train/").get("Contents", [])]
        checkpointed = {k.split("/")[2] for k in keys if k.endswith("/checkpoint.pt")}
        mid = 0
        for run in client.search_runs(
                [client.get_experiment_by_name("dgm-digits").experiment_id],
                f"tags.`mlflow.parentRunId` = '{study['parent_run_id']}'"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_fid")]
            # an epoch logged after the first checkpoint's upload: Tune has registered that
            # checkpoint by then (killed between the upload and its report, a trial would
            # rightly start over, and the check below would flake)
            mid += (run.info.status == "RUNNING" and run.data.tags["dgm.trial_id"]
                    in checkpointed and 2 <= max(steps or [epochs]) < epochs)
        return mid == 2

    deadline = time.monotonic() + 400
    while not both_mid_training() and time.monotonic() < deadline and runner.is_alive():
        time.sleep(0.3)
    assert runner.is_alive() and time.monotonic() < deadline, (
        f"no kill point: {outcome['done'].stdout[-3000:] if outcome else 'timed out'}")
    isolated.kill_node(0)
    runner.join(timeout=900)
    done = outcome["done"]
    assert done.returncode == 0, done.stderr[-3000:]

    table = pq.read_table(project / "artifacts/tune/digits/gan/results.parquet").to_pylist()
    assert len(table) == 2 and {row["status"] for row in table} == {"TERMINATED"}
    assert all(row["epochs"] == epochs for row in table)
    # One trial's worker was on the killed node (one 1-CPU worker per node); none started
    # over: every trial logged every epoch, its first one once.
    for row in table:
        steps = [m.step for m in client.get_metric_history(row["run_id"], "val_fid")]
        assert sorted(set(steps)) == list(range(1, epochs + 1)) and steps.count(1) == 1, steps
    assert isolated.alive_workers() == 1
