"""Lineage tags: collected in a real git repo with a hand-written dvc.lock, written to and read
back from a real SQLite MLflow store, printed by `dgm lineage`, set by the train stage."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo
from mlflow.tracking import MlflowClient

from dgm.config import load_params
from dgm.errors import DgmError
from dgm.stages import train as train_stage
from dgm.stages.layout import layout
from dgm.tracking.lineage import (
    PREFIX,
    canonical_hash,
    dir_md5,
    dvc_key,
    file_md5,
    format_lineage,
    lineage_of,
    lineage_tags_for_version,
    stage_dependencies,
    tag_run,
)
from dgm.tracking.mlflow_runs import start_run

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"data": {"name": "digits"},
          "models": {"gan": {"width": 8, "latent_dim": 4}},
          "train": {"epochs": 1, "num_workers": 1}}
DVC_YAML = """\
vars:
  - configs/params.yaml
stages:
  prepare:
    cmd: python pipelines/prepare.py
    outs:
      - artifacts/data/${data.name}
  train:
    foreach: ${models}
    do:
      cmd: python pipelines/train.py ${key}
      deps:
        - src
        - artifacts/data/${data.name}
        - artifacts/tune/${data.name}/${key}/best.yaml
      params:
        - configs/params.yaml:
            - models.${key}
            - train
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()


def write_params(root: Path, params: dict) -> None:
    (root / "configs" / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture()
def project(tmp_path, digits_dir, monkeypatch) -> Path:
    """A committed dgm project: params, dvc.yaml, a source file; prepared digits (ignored)."""
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "model.py").write_text("WIDTH = 8\n")
    write_params(root, PARAMS)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / ".gitignore").write_text("/artifacts/\n")
    shutil.copytree(digits_dir, root / "artifacts" / "data" / "digits")
    git(root, "init", "-q")
    Repo.init(str(root)).close()
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "init")
    return root


def collect_lineage(params, model: str, root: Path) -> dict[str, str]:
    """The train stage's lineage of ``model`` (its tuned config) in project ``root``."""
    return train_stage.lineage(params, model, layout(params, root))


def lineage(root: Path) -> dict[str, str]:
    return collect_lineage(load_params(root / "configs" / "params.yaml"), "gan", root)


def test_lineage_records_git_data_config_and_evaluator(project):
    from dgm.evaluation.classifier import Classifier, save_classifier

    tags = lineage(project)
    assert all(k.startswith(PREFIX) for k in tags)
    short = {k.removeprefix(PREFIX): v for k, v in tags.items()}
    assert short["git_commit"] == git(project, "rev-parse", "HEAD")
    assert short["git_dirty"] == "false" and "git_dirty_files" not in short
    assert short["stage"] == "train@gan"
    assert short["dataset"] == "digits" and short["dataset_path"] == "artifacts/data/digits"
    data = project / "artifacts" / "data" / "digits"
    assert short["dataset_checksum"] == dir_md5(data) and short["dataset_checksum"].endswith(".dir")
    assert "digits.csv.gz" in json.loads(short["raw_checksums"])
    assert len(short["config_hash"]) == 64
    assert short["evaluator_version"] == "none"
    evaluator = project / "artifacts" / "evaluator" / "digits" / "classifier.pt"
    save_classifier(Classifier((1, 8, 8), 10), evaluator, version="digits-0123456789ab")
    tags = lineage(project)
    assert tags[PREFIX + "evaluator_version"] == "digits-0123456789ab"
    assert tags[PREFIX + "evaluator_md5"] == file_md5(evaluator)
    evaluator.write_bytes(b"not a torch file")
    assert lineage(project)[PREFIX + "evaluator_version"] == "unknown"
    assert format_lineage(tags).splitlines()[-1] == (
        f"reproduce: git checkout {short['git_commit']} && dvc repro train@gan")


def test_dirty_flag_flips_with_a_tracked_file_but_not_dvc_lock(project):
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {prepare: {}}\n")
    assert lineage(project)[PREFIX + "git_dirty"] == "false"  # an output of `dvc repro`
    (project / "src" / "model.py").write_text("WIDTH = 16\n")
    tags = lineage(project)
    assert tags[PREFIX + "git_dirty"] == "true"
    assert tags[PREFIX + "git_dirty_files"] == "src/model.py"
    assert "warning: the working tree was dirty (src/model.py)" in format_lineage(tags)


def _params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS))
    return path


def test_outside_git_the_commit_is_unknown(tmp_path, digits_dir, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    root = tmp_path / "bare"
    shutil.copytree(digits_dir, root / "artifacts" / "data" / "digits")
    params = load_params(_params_file(tmp_path))
    tags = collect_lineage(params, "gan", root)
    assert tags[PREFIX + "git_commit"] == tags[PREFIX + "git_dirty"] == "unknown"
    assert not any(k.startswith(PREFIX + "dvc") for k in tags)  # no dvc.yaml, no dvc.lock
    text = format_lineage(tags)
    assert "reproduce:" not in text and "warning: no git commit was recorded" in text


def test_config_hash_is_stable_and_follows_the_config(project):
    first = lineage(project)[PREFIX + "config_hash"]
    assert lineage(project)[PREFIX + "config_hash"] == first
    changed = {**PARAMS, "models": {"gan": {"width": 8, "latent_dim": 8}}}
    write_params(project, changed)
    assert lineage(project)[PREFIX + "config_hash"] != first
    write_params(project, {**PARAMS, "train": {**PARAMS["train"], "epochs": 2}})
    assert lineage(project)[PREFIX + "config_hash"] != first
    write_params(project, PARAMS)
    assert lineage(project)[PREFIX + "config_hash"] == first


def test_dvc_lock_hashes_of_the_stage_data_and_params(project):
    lock = {"schema": "2.0", "stages": {
        "prepare": {"cmd": "python pipelines/prepare.py",
                    "outs": [{"path": "artifacts/data/digits", "hash": "md5",
                              "md5": "a" * 32 + ".dir", "size": 1, "nfiles": 3}]},
        "tune@gan": {"cmd": "python pipelines/tune.py gan",
                     "outs": [{"path": "artifacts/tune/digits/gan/best.yaml", "hash": "md5",
                               "md5": "b" * 32}]},
        "train@gan": {"cmd": "python pipelines/train.py gan",  # its last run
                      "deps": [{"path": "artifacts/data/digits", "hash": "md5",
                                "md5": "c" * 32 + ".dir"},
                               {"path": "src", "hash": "md5", "md5": "d" * 32 + ".dir"}]},
    }}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    tags = lineage(project)
    assert tags[dvc_key("artifacts/data/digits")] == "a" * 32 + ".dir"  # the producer's out
    assert tags[dvc_key("artifacts/tune/digits/gan/best.yaml")] == "b" * 32
    assert dvc_key("src") not in tags  # code: the git commit covers it
    raw = yaml.safe_load((project / "configs" / "params.yaml").read_text())
    assert tags[PREFIX + "dvc_params"] == canonical_hash(
        {"configs/params.yaml": {"models.gan": raw["models"]["gan"], "train": raw["train"]}})
    assert "is not the artifacts/data/digits dvc.lock recorded" in format_lineage(tags)
    write_params(project, {**PARAMS, "train": {**PARAMS["train"], "epochs": 3}})
    assert lineage(project)[PREFIX + "dvc_params"] != tags[PREFIX + "dvc_params"]
    write_params(project, PARAMS)  # clean again
    lock["stages"]["prepare"]["outs"][0]["md5"] = tags[PREFIX + "dataset_checksum"]
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert "warning" not in format_lineage(lineage(project))


def test_stage_dependencies_of_the_real_dvc_yaml():
    values = yaml.safe_load((REPO / "configs" / "params.yaml").read_text())
    name = values["data"]["name"]
    deps, params = stage_dependencies(REPO, "train@gan")
    assert f"artifacts/data/{name}" in deps
    assert f"artifacts/tune/{name}/gan/best.yaml" in deps
    assert params == {"configs/params.yaml": {"models.gan": values["models"]["gan"],
                                              "train": values["train"]}}
    assert stage_dependencies(REPO, "no-such-stage") == ([], {})


# --- MLflow ---------------------------------------------------------------------------------
TAGS = {PREFIX + "git_commit": "abc123", PREFIX + "git_dirty": "false",
        PREFIX + "stage": "train@gan", PREFIX + "config_hash": "f" * 64}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One SQLite MLflow store for this module's tests (creating one takes seconds), exported
    as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def registered(tracking_uri):
    """Run with lineage tags; v1 of `dgm-digits-gan` (no version tags, alias `champion`) and
    v2 with the lineage copied; returns (name, run_id)."""
    run_id = start_run("dgm-test", "unit", {}, {"dgm.stage": "train"}, uri=tracking_uri)
    tag_run(run_id, TAGS, tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    name = "dgm-digits-gan"
    client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{run_id}/generator", run_id=run_id)
    client.create_model_version(name, f"runs:/{run_id}/generator", run_id=run_id,
                                tags=lineage_tags_for_version(run_id, tracking_uri))
    client.set_registered_model_alias(name, "champion", "1")
    client.set_model_version_tag(name, "2", PREFIX + "git_commit", "from-version")
    return name, run_id


def test_lineage_of_reads_version_tags_else_the_source_run(registered, tracking_uri):
    name, run_id = registered
    expected = {**TAGS, PREFIX + "run_id": run_id}
    assert lineage_of(f"models:/{name}@champion", tracking_uri) == expected  # from the run
    assert lineage_of(f"models:/{name}/2", tracking_uri) == {
        **expected, PREFIX + "git_commit": "from-version"}
    assert lineage_of(f"models:/{name}", tracking_uri)[PREFIX + "git_commit"] == "from-version"
    assert lineage_of(f"runs:/{run_id}/generator", tracking_uri) == expected
    with pytest.raises(DgmError, match="does not exist"):
        lineage_of(f"models:/{name}@nope", tracking_uri)
    bare = start_run("dgm-test", "bare", {}, {}, uri=tracking_uri)
    with pytest.raises(DgmError, match="carries no lineage"):
        lineage_of(f"runs:/{bare}", tracking_uri)


def test_a_training_run_missing_from_the_store_is_one_line(tracking_uri):
    """register@ with a run.json from another store (MLFLOW_TRACKING_URI changed between
    train and register): a DgmError naming the run and the store, not MLflow's traceback."""
    with pytest.raises(DgmError, match=r"training run 0123abcd is not in the tracking store "
                       r"sqlite:///.*: register against the store it was trained with"):
        lineage_tags_for_version("0123abcd", tracking_uri)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from dgm.cli import main

    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_lineage_and_fails_cleanly(registered, tracking_uri, capsys):
    name, run_id = registered
    code, out, err = run_cli(capsys, "lineage", f"models:/{name}@champion")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "git_commit: abc123" in lines and f"run_id: {run_id}" in lines
    assert lines[-1] == "reproduce: git checkout abc123 && dvc repro train@gan"
    code, out, _ = run_cli(capsys, "lineage", f"models:/{name}/1", "--json")
    record = json.loads(out)
    assert code == 0 and record["lineage"][PREFIX + "git_commit"] == "abc123"
    assert record["reproduce"] == "git checkout abc123 && dvc repro train@gan"
    assert record["warnings"] == []
    code, out, err = run_cli(capsys, "lineage", f"models:/{name}@nope")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"dgm: error: model models:/{name}@nope does not exist in the registry at "
        f"{tracking_uri}"]


def test_train_tags_its_mlflow_run(project, tracking_uri, monkeypatch):
    from dgm.training import ray_train

    def stop(**_):
        raise RuntimeError("stop before training")

    monkeypatch.setattr(ray_train, "fit", stop)
    monkeypatch.setenv("DVC_STAGE", "train@gan")
    params = load_params(project / "configs" / "params.yaml")
    with pytest.raises(RuntimeError, match="stop before training"):
        train_stage.run(params, "gan", root=project, run_name="digits-gan-unit")
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dgm-digits").experiment_id])
    assert run.info.status == "FAILED"
    assert {k: v for k, v in run.data.tags.items() if k.startswith(PREFIX)} == lineage(project)
    # the prepared data as the run's MLflow dataset input: its DVC hash is the digest
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "digits" and used.dataset.source_type == "dvc"
    assert used.dataset.digest == dir_md5(project / "artifacts" / "data" / "digits")
    assert json.loads(used.dataset.source) == {
        "path": "artifacts/data/digits", "git_commit": git(project, "rev-parse", "HEAD")}
    assert {t.key: t.value for t in used.tags} == {"mlflow.data.context": "training"}
