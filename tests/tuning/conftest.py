"""A digits project with the session's trained evaluator, shared by the tuning tests of a
module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import digits_project, environment


@pytest.fixture(scope="module")
def tune_project(tmp_path_factory, digits_dir, digits_evaluator) -> Path:
    """Project root: artifacts/data/digits, a copy of the session's evaluator, its own
    MLflow store (exported as MLFLOW_TRACKING_URI for the module)."""
    root = digits_project(tmp_path_factory.mktemp("tune-project"), digits_dir,
                          digits_evaluator[0])
    with environment(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}"):
        yield root


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


def second_driver_env(**values: str) -> dict[str, str]:
    """The environment of a process that joins the session's Ray as a second driver."""
    import ray

    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "RAY_AUTH_MODE": "token",  # a second driver of a local cluster uses its token
            **values}
