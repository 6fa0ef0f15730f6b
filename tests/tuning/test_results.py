"""What `train` takes from the `tune` stage's best.yaml, and what an explicit --params keeps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dgm.config import Params, load_params
from dgm.models.gan import GANConfig
from dgm.stages.train import explicit_keys
from dgm.tuning.results import tuned_config

REPO = Path(__file__).resolve().parents[2]
BEST = {"model": "gan", "tuned": True, "study": "tune-digits-gan-1", "trial_id": "t1",
        "metric": "val_fid", "params": {"lr_g": 0.0005, "loss": "hinge"}}


@pytest.fixture()
def best_file(tmp_path) -> Path:
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(BEST))
    return path


def test_tuned_values_win_and_the_line_says_what_they_replace(best_file, capsys):
    config, record = tuned_config(GANConfig(lr_g=0.001), best_file, "gan")
    assert (config.lr_g, config.loss) == (0.0005, "hinge") and record == BEST
    line = capsys.readouterr().out.strip()
    assert line == ("gan: tuned params from best.yaml (tune-digits-gan-1) win over the params "
                    "file's: loss=hinge (params: nonsaturating), lr_g=0.0005 (params: 0.001)")


def test_kept_keys_keep_the_users_value_and_say_so(best_file, capsys):
    config, record = tuned_config(GANConfig(lr_g=0.001), best_file, "gan", keep={"lr_g"})
    assert (config.lr_g, config.loss) == (0.001, "hinge") and record["kept"] == ["lr_g"]
    line = capsys.readouterr().out.strip()
    assert line.endswith("; your --params value wins for lr_g=0.001 (tuned: 0.0005)")
    assert len(line.splitlines()) == 1


def test_an_untuned_record_changes_nothing(tmp_path):
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({"model": "gan", "tuned": False}))
    config = GANConfig(lr_g=0.001)
    assert tuned_config(config, tmp_path / "best.yaml", "gan") == (config, None)


def test_explicit_keys_are_those_the_file_sets_otherwise_than_the_project():
    project = load_params(REPO / "configs" / "params.yaml")
    chosen = project.model_copy(deep=True)
    assert explicit_keys(chosen, "gan", project) == frozenset()
    chosen.models["gan"] = chosen.models["gan"].model_copy(update={"lr_g": 0.001})
    assert explicit_keys(chosen, "gan", project) == {"lr_g"}
    # a model the project does not have: against its family's defaults
    chosen.models["gan2"] = GANConfig(latent_dim=64)
    assert explicit_keys(chosen, "gan2", Params()) == {"latent_dim"}


def test_dgm_train_with_an_explicit_params_file_keeps_its_values(tmp_path, digits_dir):
    """Through the CLI, stopped by a batch check before Ray starts: the one line shows the
    user's lr_g kept over the tuned one, the tuned loss applied."""
    from conftest import digits_project

    root = digits_project(tmp_path / "project", digits_dir)
    (root / "configs").mkdir()
    shutil.copy(REPO / "configs" / "params.yaml", root / "configs" / "params.yaml")
    tune_dir = root / "artifacts" / "tune" / "digits" / "gan"
    tune_dir.mkdir(parents=True)
    (tune_dir / "best.yaml").write_text(yaml.safe_dump(BEST))
    mine = yaml.safe_load((REPO / "configs" / "params.yaml").read_text())
    mine["models"]["gan"]["lr_g"] = 0.001
    mine["train"]["batch_size"] = 100_000  # more than the train split: refused before Ray
    (root / "mine.yaml").write_text(yaml.safe_dump(mine))
    result = subprocess.run([sys.executable, "-m", "dgm.cli", "train", "--model", "gan",
                             "--params", "mine.yaml"], cwd=root, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI":
                                                         f"sqlite:///{tmp_path / 'm.db'}"})
    assert result.returncode == 2, result.stderr
    assert "your --params value wins for lr_g=0.001 (tuned: 0.0005)" in result.stdout
    assert "loss=hinge (params: nonsaturating)" in result.stdout
    assert result.stderr.startswith("dgm: error: ") and "batch" in result.stderr
