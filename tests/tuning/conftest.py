"""A digits project with a trained evaluator, shared by the tuning tests of a module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dgm.config import Params


@pytest.fixture(scope="module")
def tune_project(tmp_path_factory, digits_dir) -> Path:
    """Project root: artifacts/data/digits, a trained evaluator, its own MLflow store
    (exported as MLFLOW_TRACKING_URI for the module)."""
    from dgm.workflow import train_evaluator

    root = tmp_path_factory.mktemp("tune-project")
    data = root / "artifacts" / "data" / "digits"
    data.parent.mkdir(parents=True)
    data.symlink_to(digits_dir, target_is_directory=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    train_evaluator(Params.model_validate(
        {"evaluator": {"epochs": 4, "batch_size": 64, "lr": 0.003}}), root=root)
    yield root
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def study_params(**tune) -> dict:
    """A tiny GAN study on digits: 2 trial epochs of a width-8 DCGAN."""
    return {
        "models": {"gan": {"width": 8, "latent_dim": 8}, "vae": {"width": 8, "latent_dim": 4}},
        "train": {"batch_size": 128, "sample_every": 100},
        "tune": {"models": ["gan"], "num_samples": 4, "epochs": 3, "grace_period": 1,
                 "reduction_factor": 2, "num_workers": 2, "cpus_per_worker": 0.5,
                 "trial_cpus": 1, "eval_samples": 200,
                 "space": {"gan": {"lr_g": {"loguniform": [1e-4, 2e-3]},
                                   "loss": {"choice": ["nonsaturating", "hinge"]}}},
                 **tune},
    }
