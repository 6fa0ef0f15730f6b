"""The evaluator on Fashion-MNIST with the default params: accuracy and metric floors (its
own module, so that it can run beside the MNIST checks)."""

from __future__ import annotations

import pytest
from test_evaluator_acceptance import make_project, real_data_env  # noqa: F401 - a fixture

from dgm.config import load_params
from dgm.stages.evaluator import run as train_evaluator

pytestmark = [pytest.mark.integration, pytest.mark.mnist]


@pytest.fixture(scope="module")
def fashion(real_data_env, tmp_path_factory):  # noqa: F811 - the imported fixture
    root = make_project(tmp_path_factory.mktemp("fashion"), "fashion-mnist")
    params = load_params(root / "configs" / "params.yaml")
    params.data.name = "fashion-mnist"
    return train_evaluator(params, root=root)


def test_fashion_mnist_evaluator_accuracy_and_floors(fashion):
    assert fashion["test_accuracy"] >= 0.90
    assert 0 <= fashion["floor_fid"] < 1.0
    assert fashion["floor_modes_covered"] == 10
    assert fashion["floor_class_kl"] < 0.01
