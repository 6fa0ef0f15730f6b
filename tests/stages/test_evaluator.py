"""The `evaluator` stage end to end on digits and stacked digits (fast, no MNIST)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dgm.config import Params
from dgm.evaluation.classifier import Classifier, StackedClassifier, load_classifier
from dgm.evaluation.metrics import METRICS
from dgm.evaluation.scoring import Evaluator
from dgm.stages.evaluator import run as train_evaluator
from dgm.stages.layout import layout
from dgm.stages.prepare import run as prepare


def params_for(dataset: str) -> Params:
    params = Params()
    params.data.name = dataset
    params.data.stacked.train_size = 600
    params.data.stacked.test_size = 200
    params.evaluator.epochs = 8
    params.evaluator.batch_size = 32
    params.evaluate.metric_options.kid_subsets = 10
    return params


@pytest.fixture()
def project(tmp_path, tracking_uri):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path


def test_evaluator_step_writes_classifier_reference_and_floors(digits_evaluator):
    """The session's evaluator (tests/conftest.py) is this stage's output on digits."""
    evaluator_dir, metrics = digits_evaluator
    assert json.loads((evaluator_dir / "metrics.json").read_text()) == metrics
    assert 0.9 < metrics["test_accuracy"] <= 1
    floors = {k[len("floor_"):] for k in metrics if k.startswith("floor_")}
    assert set(METRICS) <= floors and {"kid_std", "swd_pixel"} <= floors
    assert metrics["floor_memorization"] == pytest.approx(0.5, abs=0.01)
    model = load_classifier(evaluator_dir / "classifier.pt")
    assert isinstance(model, Classifier) and model.version.startswith("digits-")
    evaluator = Evaluator.open(evaluator_dir)  # the reference beside it, no data needed
    assert evaluator.meta.name == "digits" and evaluator.feature_scale > 0
    var = evaluator.reference.features.astype(np.float64).var(axis=0).mean()
    assert var == pytest.approx(1.0, rel=1e-3)


def test_evaluator_step_on_a_stacked_dataset(project):
    params = params_for("stacked-digits")
    prepare(params, root=project)
    metrics = train_evaluator(params, root=project)
    lay = layout(params, project)
    assert 0.5 < metrics["test_accuracy"] <= 1  # one channel's digit
    # all three digits right: roughly the channel accuracy cubed
    assert metrics["test_mode_accuracy"] <= metrics["test_accuracy"]
    assert metrics["test_mode_accuracy"] > metrics["test_accuracy"] ** 3 - 0.1
    model = load_classifier(lay.evaluator_dir / "classifier.pt")
    assert isinstance(model, StackedClassifier) and model.num_classes == 1000
    assert 100 < metrics["floor_modes_covered"] <= 1000
    evaluator = Evaluator.open(lay.evaluator_dir)
    assert evaluator.meta.stacked and len(evaluator.reference.histogram) == 1000
