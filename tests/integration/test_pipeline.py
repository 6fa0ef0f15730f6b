"""`dvc repro` of the whole pipeline in a fresh git repository (real DVC, Ray, and a real
`mlflow server` on loopback as the tracking server and registry)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dgm.data.parquet import read_images

REPO = Path(__file__).resolve().parents[2]
MODELS = ("gan", "rbm", "vae")  # the models of configs/params.yaml
pytestmark = pytest.mark.integration


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (
        f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory, mlflow_server_uri):
    """A copy of the committed project, with a tiny config, after one `dvc repro` that
    tracks and registers on the MLflow server."""
    from conftest import committed_copy

    repo = committed_copy(tmp_path_factory.mktemp("clone") / "dgm")
    params_file = repo / "configs" / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["evaluator"].update(epochs=3)
    params["train"].update(epochs=2, batch_size=128, num_workers=2, sample_every=1)
    params["evaluate"].update(num_samples=500, nll_importance_samples=8, nll_max_images=100)
    params["generate"].update(num_samples=300, batch_size=128)
    params["tune"].update(num_samples=1, epochs=2, num_workers=1, cpus_per_worker=1,
                          eval_samples=200)
    params["models"]["rbm"].update(gibbs_steps=100, ais_betas=2000)  # digits mixes fast
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DGM_DATA_DIR")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["RAY_ADDRESS"] = "local"  # each stage its own Ray, never another test's
    env["MLFLOW_TRACKING_URI"] = mlflow_server_uri
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo, env)
    run(["dgm", "data", "init"], repo, env)
    env["DGM_PROFILE"] = str(repo.parent / "profile.jsonl")  # each stage's phases
    first = run(["dvc", "repro"], repo, env)
    del env["DGM_PROFILE"]
    return repo, env, first


def test_a_successful_repro_prints_nothing_alarming(pipeline_repo):
    from conftest import TROUBLE

    _, _, first = pipeline_repo
    lines = (first.stdout + first.stderr).splitlines()
    assert [line for line in lines if TROUBLE.search(line)] == []


def test_every_stage_reports_where_its_time_went(pipeline_repo):
    repo, _, _ = pipeline_repo
    lines = (repo.parent / "profile.jsonl").read_text().splitlines()
    records = {r["stage"]: r for r in map(json.loads, lines)}
    assert set(records) == {"prepare", "evaluator", "report",
                            *(f"{stage}@{m}" for stage in ("tune", "train", "evaluate",
                                                           "register", "generate")
                              for m in MODELS)}
    for record in records.values():
        assert 0 < record["startup_s"] < 120 and record["total_s"] > 0, record
    for model in MODELS:
        train = records[f"train@{model}"]
        assert train["ray_start_s"] > 0 and train["mlflow_s"] > 0, train
        assert 0 < train["train_loop_s"] < train["ray_train_s"] < train["total_s"], train
    tuned = records["tune@gan"]
    assert 0 < tuned["ray_tune_s"] < tuned["total_s"] and "ray_tune_s" not in records[
        "tune@vae"]


def test_repro_prepares_parquet(pipeline_repo):
    repo, _, _ = pipeline_repo
    counts = {split: sum(pq.ParquetFile(p).metadata.num_rows
                         for p in (repo / "artifacts/data/digits" / split).glob("part-*.parquet"))
              for split in ("train", "val", "test")}
    assert counts == {"train": 1294, "val": 144, "test": 359}


def test_repro_tracks_runs_and_registers_champions(pipeline_repo):
    repo, env, _ = pipeline_repo
    assert not (repo / "mlflow.db").exists()  # everything went to the server
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("dgm-digits")
    runs = client.search_runs([experiment.experiment_id], "tags.`dgm.stage` = 'train'")
    assert sorted(r.data.tags["dgm.model"] for r in runs) == list(MODELS)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert "eval_fid" in r.data.metrics and r.data.metrics["eval_fid"] > 0
        assert r.data.params["train.epochs"] == "2"
    for model in MODELS:
        version = client.get_model_version_by_alias(f"dgm-digits-{model}", "champion")
        assert version.tags["dgm.gating_metric"] == "fid"


def test_repro_tunes_then_trains_with_the_best_params(pipeline_repo):
    repo, env, _ = pipeline_repo
    best = yaml.safe_load((repo / "artifacts/tune/digits/gan/best.yaml").read_text())
    assert best["tuned"] is True and best["metric"] == "val_fid"
    assert set(best["params"]) == {"lr_g", "lr_d", "loss", "latent_dim"}
    assert pq.read_table(repo / "artifacts/tune/digits/gan/results.parquet").num_rows == 1
    for model in ("vae", "rbm"):  # not in tune.models: trained as configured
        record = yaml.safe_load((repo / f"artifacts/tune/digits/{model}/best.yaml").read_text())
        assert record == {"model": model, "tuned": False, "params": {}}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("dgm-digits")
    (run,) = client.search_runs([experiment.experiment_id],
                                "tags.`dgm.stage` = 'train' and tags.`dgm.model` = 'gan'")
    assert run.data.tags["dgm.tuned_by"] == best["study"]
    assert run.data.params["model.loss"] == best["params"]["loss"]
    assert run.data.params["model.latent_dim"] == str(best["params"]["latent_dim"])
    (study,) = client.search_runs([experiment.experiment_id], "tags.`dgm.stage` = 'tune'")
    assert study.info.status == "FINISHED"
    assert study.data.tags["dgm.best_trial_id"] == best["trial_id"]


def test_repro_generates_valid_images(pipeline_repo):
    repo, _, _ = pipeline_repo
    for model in MODELS:
        samples = read_images(repo / f"artifacts/samples/digits/{model}.parquet")
        assert samples.images.shape == (300, 8, 8, 1)
        assert samples.images.std() > 10  # not a constant image
        assert (repo / f"artifacts/samples/digits/{model}.png").stat().st_size > 0


def test_another_process_pulls_the_champion_over_http(pipeline_repo, tmp_path):
    """Downstream: a process with nothing but the server's URI generates from the champion."""
    _, env, _ = pipeline_repo
    out = tmp_path / "pulled.parquet"
    run(["dgm", "generate", "--model-uri", "models:/dgm-digits-gan@champion",
         "--num-samples", "200", "--seed", "3", "--output", str(out)], tmp_path, env)
    samples = read_images(out)
    assert samples.images.shape == (200, 8, 8, 1) and samples.images.std() > 10
    assert MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "dgm-digits-gan", "champion").tags["dgm.decision"] == "champion"


def test_champion_carries_its_lineage(pipeline_repo):
    repo, env, _ = pipeline_repo
    head = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    version = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "dgm-digits-vae", "champion")
    assert version.tags["dgm.lineage.git_commit"] == head
    assert version.tags["dgm.lineage.stage"] == "train@vae"
    assert version.tags["dgm.lineage.dataset"] == "digits"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (prepared,) = [o for o in lock["stages"]["prepare"]["outs"]
                   if o["path"] == "artifacts/data/digits"]
    assert version.tags["dgm.lineage.dataset_checksum"] == prepared["md5"]
    assert version.tags["dgm.lineage.dvc.artifacts/data/digits"] == prepared["md5"]
    (used,) = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(
        version.run_id).inputs.dataset_inputs  # the MLflow dataset input: DVC's hash
    assert (used.dataset.name, used.dataset.digest) == ("digits", prepared["md5"])
    assert len(version.tags["dgm.lineage.dvc_params"]) == 64
    shown = json.loads(run(["dgm", "lineage", "models:/dgm-digits-vae@champion", "--json"],
                           repo, env).stdout)
    assert shown["lineage"]["dgm.lineage.git_commit"] == head
    assert shown["reproduce"] == f"git checkout {head} && dvc repro train@vae"
    printed = run(["dgm", "lineage", "models:/dgm-digits-vae@champion"], repo, env).stdout
    assert f"git checkout {head} && dvc repro train@vae" in printed


def test_metrics_and_plots_are_declared(pipeline_repo):
    repo, env, _ = pipeline_repo
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    files = shown[""]["data"]
    every_metric = {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
                    "class_entropy", "class_kl", "mode_kl", "modes_covered", "inception_score",
                    "swd", "swd_pixel", "memorization", "evaluator_test_accuracy"}
    for model in MODELS:
        metrics = files[f"artifacts/eval/digits/{model}/metrics.json"]["data"]
        assert every_metric <= set(metrics)
    assert "nll_nats" not in files["artifacts/eval/digits/gan/metrics.json"]["data"]
    for model in ("vae", "rbm"):
        nll = files[f"artifacts/eval/digits/{model}/metrics.json"]["data"]["nll_nats"]
        assert 0 < nll < 64 * math.log(2)  # better than a constant p = 0.5 per pixel
    evaluator = files["artifacts/evaluator/digits/metrics.json"]["data"]
    assert evaluator["test_accuracy"] > 0.8 and evaluator["floor_fid"] >= 0
    assert (repo / "artifacts/evaluator/digits/reference.npz").stat().st_size > 0
    report = (repo / "artifacts/reports/digits.md").read_text()
    assert all(f"| {m} |" in report for m in MODELS) and "real test (floor)" in report
    run(["dvc", "plots", "show", "-o", "plots"], repo, env)
    html = (repo / "plots" / "index.html").read_text()
    assert "GAN losses" in html and "VAE losses" in html and "RBM reconstruction" in html
    assert "artifacts/tune/digits/gan/curves.csv" in html  # the trials' val_fid by epoch


def test_stages_follow_the_configured_models(pipeline_repo, tmp_path):
    """dvc.yaml's foreach is over `models`: a model added to the params gets its stages."""
    repo, env, _ = pipeline_repo
    params_file = repo / "configs" / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["models"]["cvae"] = {"family": "vae", "conditional": True, "latent_dim": 4}
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        listed = run(["dvc", "stage", "list", "--names-only"], repo, env).stdout.split()
    finally:
        params_file.write_text(original)
    for stage in ("tune", "train", "evaluate", "register", "generate"):
        assert {f"{stage}@{m}" for m in (*MODELS, "cvae")} <= set(listed)


def test_second_repro_runs_nothing(pipeline_repo):
    repo, env, _ = pipeline_repo
    started = time.perf_counter()
    second = run(["dvc", "repro"], repo, env)
    assert time.perf_counter() - started < 60  # generous: a loaded 2-core machine
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout


# A file each stage imports → the stages that must re-run when it changes (and one that
# must not): dvc.yaml's deps follow the code, so `dvc repro` never calls stale outputs
# up to date.
CODE_CHANGES = {
    "src/dgm/training/ray_train.py": ({"tune@gan", "train@gan", "train@vae"}, "evaluate@gan"),
    "src/dgm/evaluation/scoring.py": ({"evaluator", "evaluate@gan", "evaluate@rbm"},
                                      "register@gan"),
    "src/dgm/tracking/registry.py": ({"register@gan", "generate@vae", "train@rbm"},
                                     "evaluate@gan"),
    "src/dgm/generation/batch.py": ({"generate@gan", "generate@rbm"}, "train@gan"),
    "src/dgm/stages/report.py": ({"report"}, "generate@gan"),
}


def dvc_status(repo: Path, env: dict) -> set[str]:
    """The stages `dvc status` lists as changed."""
    return set(json.loads(run(["dvc", "status", "--json"], repo, env).stdout))


def test_changing_code_a_stage_runs_makes_it_stale(pipeline_repo):
    repo, env, _ = pipeline_repo
    for path, (stale, fresh) in CODE_CHANGES.items():
        source = repo / path
        original = source.read_text()
        try:
            source.write_text(original + "\n# changed\n")
            listed = dvc_status(repo, env)
        finally:
            source.write_text(original)
        assert stale <= listed, path
        assert fresh not in listed and "prepare" not in listed, path
    assert dvc_status(repo, env) == set()  # restored: up to date again


def test_an_experiment_in_a_temporary_copy_keeps_its_run_registry_entry_and_ray_results(
        pipeline_repo):
    """`dvc exp run --temp` works in a copy under .dvc/tmp/exps that DVC deletes afterwards;
    with the default store (no MLFLOW_TRACKING_URI) its MLflow run, registered version and
    Ray Train results must land in the repository, and `dvc exp show` list its metrics."""
    from mlflow.tracking import MlflowClient

    repo, env, _ = pipeline_repo
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    results = repo / "artifacts" / "ray_results"
    before = set(results.glob("digits-gan-*"))
    run(["dvc", "exp", "run", "--temp", "-n", "temp-exp", "-S",
         "configs/params.yaml:train.epochs=1", "register@gan"], repo, env)
    assert not list((repo / ".dvc" / "tmp" / "exps").glob("tmp*"))  # the copy is gone
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dgm-digits")
    (trained,) = client.search_runs([experiment.experiment_id], "tags.`dgm.stage` = 'train'")
    assert trained.info.status == "FINISHED" and trained.data.params["train.epochs"] == "1"
    (version,) = client.search_model_versions("name = 'dgm-digits-gan'")
    assert version.run_id == trained.info.run_id
    assert client.get_model_version_by_alias("dgm-digits-gan", "champion").version == (
        version.version)
    assert set(results.glob("digits-gan-*")) - before  # the exp's Train run, resumable here
    shown = run(["dvc", "exp", "show", "--csv"], repo, env).stdout
    (row,) = [r for r in csv.DictReader(io.StringIO(shown)) if r["Experiment"] == "temp-exp"]
    # the experiment's commit carries its metrics (git-tracked): the fid it was gated on
    assert float(row["artifacts/eval/digits/gan/metrics.json:fid"]) == pytest.approx(
        float(version.tags["dgm.gating_value"])), row


def test_a_queued_experiment_keeps_its_run_in_the_repository_store(pipeline_repo):
    """`dvc exp run --queue`, then `dvc queue start`: DVC's queue worker runs it in its own
    copy under .dvc/tmp/exps, which it deletes; with the default store its MLflow run (here
    the `evaluator` stage's, one epoch) lands in the repository's mlflow.db, and `dvc exp
    show` lists its metrics."""
    repo, env, _ = pipeline_repo
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    run(["dvc", "exp", "run", "--queue", "-n", "queued-exp", "-S",
         "configs/params.yaml:evaluator.epochs=1", "evaluator"], repo, env)
    run(["dvc", "queue", "start"], repo, env)
    deadline, status = time.monotonic() + 600, ""
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo, env).stdout
        if "queued-exp" in status and any(word in status for word in ("Success", "Failed")):
            break
        time.sleep(3)
    logs = subprocess.run(["dvc", "queue", "logs", "queued-exp"], cwd=repo, env=env,
                          capture_output=True, text=True).stdout
    assert "Success" in status, f"{status}\n{logs[-4000:]}"
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dgm-digits")
    runs = client.search_runs([experiment.experiment_id], "tags.`dgm.stage` = 'evaluator'")
    assert [r.data.params["evaluator.epochs"] for r in runs] == ["1"]
    assert runs[0].info.status == "FINISHED"
    assert not list((repo / ".dvc" / "tmp" / "exps").glob("tmp*"))
    shown = run(["dvc", "exp", "show", "--csv"], repo, env).stdout
    (row,) = [r for r in csv.DictReader(io.StringIO(shown)) if r["Experiment"] == "queued-exp"]
    # each metrics file with a test_accuracy has a column; "!" marks the ones that are not
    # this stage's (DVC's sign for a value it does not have)
    shown_accuracy = {row[c] for c in row if c.split(":")[-1] == "test_accuracy"
                      and row[c] not in ("", "!", "-")}
    # the store's run is the queued experiment's own: the same one-epoch accuracy
    assert [float(a) for a in shown_accuracy] == pytest.approx(
        [runs[0].data.metrics["test_accuracy"]], abs=1e-6), (shown_accuracy, row)
