"""The evaluator on real data: accuracy, metric floors (real test vs train), noise
monotonicity, Stacked MNIST modes and the `dgm evaluate` command, with the default params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dgm.config import load_params
from dgm.data.parquet import read_split
from dgm.evaluation.classifier import StackedClassifier, load_classifier
from dgm.evaluation.metrics import MetricOptions, compute
from dgm.evaluation.reference import build_reference
from dgm.evaluation.scoring import Evaluator
from dgm.stages.evaluator import run as train_evaluator
from dgm.stages.layout import layout
from dgm.stages.prepare import run as prepare

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.mnist]


def make_project(root: Path, dataset: str, **stacked) -> Path:
    """A project directory (dvc.yaml + params) with ``dataset`` prepared."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "configs").mkdir(exist_ok=True)
    shutil.copy(REPO / "configs" / "params.yaml", root / "configs" / "params.yaml")
    params = load_params(root / "configs" / "params.yaml")
    params.data.name = dataset
    for key, value in stacked.items():
        setattr(params.data.stacked, key, value)
    prepare(params, root=root)
    return root


@pytest.fixture(scope="module")
def real_data_env(mirror_dir, tmp_path_factory):
    """DGM_DATA_DIR at the mirror and a private MLflow store for the module."""
    saved = {k: os.environ.get(k) for k in ("DGM_DATA_DIR", "MLFLOW_TRACKING_URI")}
    os.environ["DGM_DATA_DIR"] = str(mirror_dir)
    os.environ["MLFLOW_TRACKING_URI"] = \
        f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    yield mirror_dir
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def mnist(real_data_env, tmp_path_factory):
    """MNIST prepared and its evaluator trained by the `evaluator` step (default params)."""
    root = make_project(tmp_path_factory.mktemp("mnist"), "mnist")
    params = load_params(root / "configs" / "params.yaml")
    params.data.name = "mnist"
    metrics = train_evaluator(params, root=root)
    return root, layout(params, root), metrics


def test_mnist_evaluator_accuracy_and_floors(mnist):
    _, lay, metrics = mnist
    assert metrics["test_accuracy"] >= 0.99
    assert json.loads((lay.evaluator_dir / "metrics.json").read_text()) == metrics
    # The floor of each metric: the real test split scored against the train split.
    assert 0 <= metrics["floor_fid"] < 1.0
    assert metrics["floor_modes_covered"] == 10
    assert abs(metrics["floor_kid"]) < 3 * metrics["floor_kid_std"] + 0.01
    assert metrics["floor_precision"] > 0.8 and metrics["floor_recall"] > 0.8
    assert metrics["floor_coverage"] > 0.8
    assert metrics["floor_class_kl"] < 0.01 and metrics["floor_mode_kl"] < 0.01
    assert metrics["floor_inception_score"] > 9.5
    assert metrics["floor_memorization"] == pytest.approx(0.5, abs=1e-3)


def test_mnist_noise_levels_rank_monotonically(mnist):
    _, lay, metrics = mnist
    evaluator = Evaluator.open(lay.evaluator_dir)
    test = read_split(lay.data_dir, "test").images
    rng = np.random.default_rng(0)
    scores = [evaluator.score(np.clip(test / 255 + rng.normal(0, sigma, test.shape), 0, 1),
                              ["fid", "kid"]).metrics for sigma in (0.05, 0.1, 0.2)]
    fids = [metrics["floor_fid"], *(s["fid"] for s in scores)]
    kids = [metrics["floor_kid"], *(s["kid"] for s in scores)]
    assert fids == sorted(fids) and len(set(fids)) == 4
    assert kids == sorted(kids) and len(set(kids)) == 4


def test_dgm_evaluate_command_scores_samples_from_the_repository(mnist, tmp_path):
    root, lay, metrics = mnist
    samples = tmp_path / "test.npz"
    np.savez(samples, images=read_split(lay.data_dir, "test").images[..., 0])  # N×H×W
    out = tmp_path / "metrics.json"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dgm"), "evaluate", "--dataset", "mnist",
         "--samples", str(samples), "--output", str(out)],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    scored = json.loads(out.read_text())
    assert set(scored) == {f[len("floor_"):] for f in metrics if f.startswith("floor_")}
    for key, value in scored.items():  # the same images, the same evaluator: the floors
        assert value == pytest.approx(metrics[f"floor_{key}"], rel=1e-6, abs=1e-9), key


def test_stacked_mnist_real_data_covers_the_modes(mnist, tmp_path):
    """26 000 real Stacked MNIST images, each channel classified by the MNIST evaluator."""
    _, lay, _ = mnist
    root = make_project(tmp_path / "stacked", "stacked-mnist", train_size=26_000,
                        test_size=2000, seed=0)
    data = root / "artifacts" / "data" / "stacked-mnist"
    stacked = StackedClassifier(load_classifier(lay.evaluator_dir / "classifier.pt"), 3)
    evaluator = Evaluator.from_reference(stacked, *build_reference(stacked, data))
    train = read_split(data, "train")
    every = np.concatenate([train.images, read_split(data, "val").images])
    assert len(every) == 26_000
    gen = evaluator.featurize(every)
    values = compute(["modes_covered", "mode_kl"], evaluator.reference, gen, MetricOptions())
    assert values["modes_covered"] >= 990
    assert values["mode_kl"] < 0.05
    true_modes = np.concatenate([train.labels, read_split(data, "val").labels])
    assert (gen.probs.argmax(1) == true_modes).mean() > 0.96
