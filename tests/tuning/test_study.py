"""Real Ray Tune studies on digits (local Ray, 2 CPUs): ASHA + Optuna, MLflow parent and
child runs, the best config used by `train`, resource and storage checks."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TROUBLE
from mlflow.tracking import MlflowClient

from dgm.config import Params
from dgm.errors import DgmError
from dgm.stages import train as train_stage
from dgm.stages.layout import Layout
from dgm.stages.tune import run as tune
from dgm.tracking.mlflow_runs import tracking_uri
from dgm.tuning import study as study_mod

from .conftest import second_driver_env, study_params


def child_runs_of(client: MlflowClient, parent_run_id: str):
    exp = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def test_small_study_writes_the_best_config_that_train_uses(ray_session, tune_project,
                                                           tmp_path):
    """`dgm tune` (the CLI, a second driver of the session's Ray, so that what Ray forwards
    from its workers reaches its console): ASHA stops a trial, and the whole output has no
    line a user would read as trouble."""
    params = Params.model_validate(study_params())
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(study_params()))
    done = subprocess.run([sys.executable, "-m", "dgm.cli", "tune", "--model", "gan",
                           "--params", str(params_file)], cwd=tune_project,
                          env=second_driver_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert [line for line in (done.stdout + done.stderr).splitlines()
            if TROUBLE.search(line)] == [], done.stdout + done.stderr
    out = Layout(tune_project, "digits").tune_dir("gan")

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["tuned"] is True and best["metric"] == "val_fid"
    assert set(best["params"]) == {"lr_g", "loss"}
    assert 1e-4 <= best["params"]["lr_g"] <= 2e-3
    assert best["params"]["loss"] in ("nonsaturating", "hinge")

    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == 4
    assert {row["status"] for row in table} == {"TERMINATED"}
    assert all(1 <= row["epochs"] <= 3 for row in table)
    assert any(row["epochs"] < 3 for row in table), "ASHA stopped no trial early"
    # The best trial has the lowest final val_fid of the trials; ASHA kept it to the end.
    finished = [row for row in table if not math.isnan(row["score_last"])]
    assert best["score"] == min(row["score_last"] for row in finished)
    assert best["trial_id"] == min(finished, key=lambda r: r["score_last"])["trial_id"]
    # The MLflow child runs: FINISHED when a trial ran all epochs, KILLED when ASHA stopped it.
    for row in table:
        assert row["run_status"] == ("FINISHED" if row["epochs"] == 3 else "KILLED"), row
        assert row["attempts"] == 1 and row["node_id"]

    client = MlflowClient(tracking_uri(tune_project))
    parent = client.get_run(best["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dgm.best_trial_id"] == best["trial_id"]
    assert parent.data.params["tune.num_samples"] == "4"
    assert math.isclose(parent.data.metrics["best_val_fid"], best["score"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} == {
        "study/best.yaml", "study/results.parquet", "study/curves.csv", "study/curves.png"}
    children = child_runs_of(client, parent.info.run_id)
    assert len(children) == 4
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert [c.data.tags.get("dgm.best_trial") for c in children].count("true") == 1
    # One trial at a time: every trial ran in the first trial's actor (a stopped trial ended
    # its Train run, so Tune could reuse the actor instead of starting a new one).
    assert len({c.data.tags["dgm.trial_process"] for c in children}) == 1
    best_child = client.get_run(best["run_id"])
    assert best_child.data.params["trial.loss"] == best["params"]["loss"]
    # Curves: one row per reported epoch, the same values the child run logged.
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert len(curves) == sum(row["epochs"] for row in table)
    logged = [m.value for m in client.get_metric_history(best["run_id"], "val_fid")]
    assert [float(r["score"]) for r in curves if r["trial"] == best["trial_id"]] == \
        pytest.approx(logged)

    # `train` applies the best params over models.gan (the config it trains; the pipeline
    # test checks the trained run's params and its dgm.tuned_by tag after `dvc repro`).
    config, tuned = train_stage.model_config(params, "gan", Layout(tune_project, "digits"))
    assert tuned == best
    assert config.loss == best["params"]["loss"]
    assert config.lr_g == pytest.approx(best["params"]["lr_g"])
    assert config.model_dump(exclude={"loss", "lr_g"}) == params.model("gan").model_dump(
        exclude={"loss", "lr_g"})


def test_an_untuned_model_gets_a_record_and_trains_as_set(tune_project):
    params = Params.model_validate(study_params())
    assert tune(params, "vae", root=tune_project) == {"model": "vae", "tuned": False}
    out = Layout(tune_project, "digits").tune_dir("vae")
    assert yaml.safe_load((out / "best.yaml").read_text()) == {
        "model": "vae", "tuned": False, "params": {}}
    assert pq.read_table(out / "results.parquet").num_rows == 0
    assert list(csv.reader(open(out / "curves.csv"))) == [["trial", "epoch", "score"]]


def test_a_trial_larger_than_the_cluster_fails_at_once(ray_session, tune_project):
    params = Params.model_validate(study_params(num_workers=4, cpus_per_worker=1))
    with pytest.raises(DgmError, match=r"^a trial \(tune.trial_cpus \+ tune.num_workers × "
                                       r"tune.cpus_per_worker\): 5 CPUs needed, but the Ray "
                                       r"cluster has 2$"):
        tune(params, "gan", root=tune_project)
    params = Params.model_validate(study_params(num_workers=1, cpus_per_worker=3,
                                                trial_cpus=0.5))
    with pytest.raises(DgmError, match="CPUs"):
        tune(params, "gan", root=tune_project)


def test_a_trial_whose_workers_would_not_fit_a_node_is_refused_before_any_starts(
        ray_session, tmp_path, tune_project):
    """The memory check of `dgm train` also guards a study: a trial batch of 8×8 images that
    (with its gradient) outgrows the largest node fails in one line, with no study written."""
    params = Params.model_validate(study_params())
    node = max(n["Resources"]["memory"] for n in ray_session.nodes() if n["Alive"])
    train = params.train.model_copy(update={"batch_size": int(node / (4 * 64)) + 2})
    plan = study_mod.StudyPlan(
        model_name="gan", model_config=params.model("gan"), space=params.search_space("gan"),
        dataset="digits", dataset_dir=tune_project / "artifacts/data/digits",
        evaluator_dir=tune_project / "artifacts/evaluator/digits", storage_path=str(tmp_path),
        tracking_uri=tracking_uri(tune_project), experiment="dgm-digits-memory",
        pointer=tmp_path / "study.json")
    with pytest.raises(DgmError, match=r"^each Ray Train worker would hold .* GiB for the "
                                       r"train and val splits as float32 plus its batch, more "
                                       r"than the .* GiB Ray gives tasks on a node: use "
                                       r"a smaller train.batch_size$"):
        study_mod.run_study(params.tune, train, plan)
    assert list(tmp_path.iterdir()) == []
    assert MlflowClient(tracking_uri(tune_project)).get_experiment_by_name(
        "dgm-digits-memory") is None


def test_resume_without_a_study_is_a_user_error(ray_session, tmp_path, tune_project):
    params = Params.model_validate(study_params())
    with pytest.raises(DgmError, match="no earlier study"):
        plan = study_mod.StudyPlan(
            model_name="gan", model_config=params.model("gan"), space=params.search_space("gan"),
            dataset="digits", dataset_dir=tune_project / "artifacts/data/digits",
            evaluator_dir=tune_project / "artifacts/evaluator/digits", storage_path=str(tmp_path),
            tracking_uri=tracking_uri(tune_project), experiment="dgm-digits",
            pointer=tmp_path / "none.json")
        study_mod.run_study(params.tune, params.train, plan, resume=True)
    with pytest.raises(DgmError, match="not in tune.models"):
        tune(params, "vae", root=tune_project, resume=True)
