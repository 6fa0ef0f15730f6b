"""The `dgm` command on bad input: one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def dgm(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dgm.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgm: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "params.yaml").write_text(
        (REPO / "configs" / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DGM_DATA_DIR", raising=False)
    return tmp_path


def test_unknown_dataset(workdir):
    assert_one_line_error(dgm("prepare", "--dataset", "cifar-1000", cwd=workdir),
                          "unknown dataset 'cifar-1000'")
    assert not (workdir / "artifacts").exists()


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("train:\n  epochz: 3\n", "train.epochz: unknown key"),
    ("train:\n  epochs: many\n", "train.epochs"),
    ("models:\n  gan:\n    widht: 3\n", "models.gan.widht: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
])
def test_bad_config(workdir, yaml_text, key):
    bad = workdir / "configs" / "bad.yaml"
    bad.write_text(yaml_text)
    assert_one_line_error(dgm("prepare", "--params", str(bad), cwd=workdir), str(bad), key)


def test_missing_raw_file(workdir):
    empty = workdir / "mirror"
    (empty / "mnist").mkdir(parents=True)
    result = dgm("prepare", "--dataset", "mnist", cwd=workdir, env={"DGM_DATA_DIR": str(empty)})
    assert_one_line_error(result, "train-images-idx3-ubyte.gz", "not found")
    assert not (workdir / "artifacts").exists()


def test_checksum_mismatch(workdir):
    mirror = workdir / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    for name in IDX:
        (mirror / name).write_bytes(b"not the real file")
    result = dgm("prepare", "--dataset", "mnist", cwd=workdir,
                 env={"DGM_DATA_DIR": str(mirror.parent)})
    assert_one_line_error(result, "checksum mismatch")
    assert not (workdir / "artifacts").exists()


@pytest.mark.parametrize("count", ["0", "-4"])
def test_non_positive_num_samples(workdir, count):
    out = workdir / "s.parquet"
    result = dgm("generate", "--model-uri", "models:/dgm-digits-gan@champion",
                 "--num-samples", count, "--output", str(out), cwd=workdir)
    assert_one_line_error(result, "--num-samples must be positive")
    assert not out.exists()


def test_model_uri_that_does_not_exist(workdir):
    out = workdir / "s.parquet"
    result = dgm("generate", "--model-uri", "models:/dgm-digits-gan@champion",
                 "--num-samples", "10", "--output", str(out), cwd=workdir)
    assert_one_line_error(result, "models:/dgm-digits-gan@champion", "does not exist")
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_usage_error_is_one_line(workdir):
    result = dgm("train", cwd=workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--model" in result.stderr
