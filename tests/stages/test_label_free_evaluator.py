"""The `evaluator` stage on image folders: a label-free autoencoder for unlabelled data
(calibrated by pixel noise), the classifier for labelled folders; class metrics n/a."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dgm.config import Params
from dgm.data.parquet import read_split
from dgm.data.shapes import write_shapes_folder
from dgm.evaluation.classifier import Classifier, FeatureAutoencoder, load_classifier
from dgm.evaluation.metrics import CLASS_METRICS, METRICS
from dgm.evaluation.scoring import Evaluator
from dgm.stages.evaluator import run as train_evaluator
from dgm.stages.layout import layout
from dgm.stages.prepare import run as prepare
from dgm.stages.report import run as report


def folder_params(folder, labels: str) -> Params:
    params = Params.model_validate({"data": {"name": "folder", "folder": {
        "path": str(folder), "resolution": 16, "labels": labels}}, "models": {"gan": {}}})
    params.evaluator.epochs = 6
    params.evaluator.batch_size = 64
    params.evaluator.lr = 3e-3
    params.evaluate.metric_options.kid_subsets = 10
    return params


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images") / "shapes"
    write_shapes_folder(folder, 2500, resolution=16, seed=0)
    return folder


@pytest.fixture(scope="module")
def unlabelled(shapes_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabelled")
    (root / "dvc.yaml").write_text("stages: {}\n")
    params = folder_params(shapes_folder, "none")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        prepare(params, root=root)
        yield params, root, train_evaluator(params, root=root)


def test_unlabelled_folder_gets_the_autoencoder_without_class_metrics(unlabelled):
    params, root, metrics = unlabelled
    lay = layout(params, root)
    assert json.loads((lay.evaluator_dir / "metrics.json").read_text()) == metrics
    assert isinstance(load_classifier(lay.evaluator_dir / "classifier.pt"), FeatureAutoencoder)
    assert "test_accuracy" not in metrics
    # it reconstructs: far below the variance of the pixels (what predicting the mean costs)
    pixels = read_split(lay.data_dir, "test").images.astype(np.float64) / 255
    assert metrics["test_reconstruction_mse"] < 0.5 * pixels.var()
    floors = {k[len("floor_"):] for k in metrics if k.startswith("floor_")}
    assert floors & CLASS_METRICS == set()  # not applicable: absent, never zero
    assert set(METRICS) - CLASS_METRICS <= floors
    assert metrics["floor_memorization"] == pytest.approx(0.5, abs=0.02)


def test_label_free_fid_ranks_held_out_data_below_noisy_data(unlabelled):
    """Real-vs-real FID of held-out images < with N(0, 0.1²) pixel noise < with 0.2²."""
    params, root, _ = unlabelled
    lay = layout(params, root)
    evaluator = Evaluator.open(lay.evaluator_dir)
    test = read_split(lay.data_dir, "test").images
    rng = np.random.default_rng(0)

    def noisy(sigma: float) -> np.ndarray:
        return np.clip(test / 255 + rng.normal(0, sigma, test.shape), 0, 1)

    scores = [evaluator.score(images, ["fid", "kid", "precision"]).metrics
              for images in (test, noisy(0.1), noisy(0.2))]
    fids = [s["fid"] for s in scores]
    assert fids[0] < fids[1] < fids[2]
    assert fids[1] > 3 * fids[0]  # the noise is not lost in the features
    assert scores[0]["kid"] < scores[1]["kid"] < scores[2]["kid"]
    result = evaluator.score(test, None)
    assert set(result.not_applicable) == CLASS_METRICS
    assert CLASS_METRICS.isdisjoint(result.metrics)


def test_report_marks_class_metrics_na(unlabelled):
    params, root, _ = unlabelled
    lay = layout(params, root)
    out = lay.eval_dir("gan")
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"fid": 1.5, "kid": 0.01}))
    text = report(params, root=root).read_text()
    header, _, gan, floor = text.strip().splitlines()[-4:]
    assert "class_kl ↓" in header and "inception_score ↑" in header
    cells = dict(zip(header.split(" | "), gan.split(" | "), strict=True))
    assert cells["class_kl ↓"] == "n/a" and cells["fid ↓"] == "1.5"
    assert floor.startswith("| real test (floor)") and "n/a" in floor


def test_labelled_folder_keeps_the_classifier(shapes_folder, tmp_path, tracking_uri):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    params = folder_params(shapes_folder, "auto")
    prepare(params, root=tmp_path)
    metrics = train_evaluator(params, root=tmp_path)
    model = load_classifier(layout(params, tmp_path).evaluator_dir / "classifier.pt")
    assert isinstance(model, Classifier) and model.num_classes == 10
    assert metrics["test_accuracy"] > 0.4  # chance: 0.1 (6 epochs at 16 px)
    assert {f"floor_{k}" for k in CLASS_METRICS} <= set(metrics)
