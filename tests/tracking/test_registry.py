"""A real SQLite MLflow store: pyfunc generator round trip and the champion gate."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from dgm.errors import DgmError
from dgm.models.gan import GANConfig
from dgm.models.generator import sample_uint8, save_generator
from dgm.models.registry import build_model
from dgm.tracking.mlflow_runs import flatten, start_run
from dgm.tracking.pyfunc import load_generator_model, log_generator, request_args, request_label
from dgm.tracking.registry import CHALLENGER, CHAMPION, beats, register_generator, resolve_model_uri


@pytest.fixture()
def logged_model(tmp_path, tracking_uri):
    """A tiny DCGAN logged as a pyfunc generator; returns (model_uri, run_id, model)."""
    model = build_model(GANConfig(width=8, latent_dim=4), (1, 8, 8), seed=0)
    path = save_generator(model, tmp_path / "generator.pt", extra={"dataset": "digits"})
    run_id = start_run("dgm-test", "unit", {"model": {"width": 8}}, {"dgm.stage": "test"},
                       uri=tracking_uri)
    return log_generator(run_id, path, (1, 8, 8), tracking_uri), run_id, model


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2.5}) == {
        "a.b": "1", "a.c.d": "x", "e": "2.5"}


@pytest.mark.parametrize(
    ("candidate", "incumbent", "mode", "delta", "expected"),
    [(1.0, None, "min", 0.0, True), (1.0, 2.0, "min", 0.0, True), (2.0, 1.0, "min", 0.0, False),
     (1.9, 2.0, "min", 0.5, False), (3.0, 2.0, "max", 0.0, True),
     (float("nan"), 2.0, "min", 0.0, False), (1.0, 1.0, "min", 0.0, False)],
)
def test_beats(candidate, incumbent, mode, delta, expected):
    assert beats(candidate, incumbent, mode, delta) is expected


def test_pyfunc_generator_matches_the_raw_generator(logged_model):
    model_uri, _, model = logged_model
    loaded = load_generator_model(model_uri)
    images = loaded.predict(12, seed=5)
    assert images.shape == (12, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, sample_uint8(model, 12, seed=5))
    assert loaded.extra["dataset"] == "digits"
    # plain pyfunc use, as a serving client would: params override the default request
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    request = pd.DataFrame({"num_samples": [3], "seed": [5]})
    np.testing.assert_array_equal(pyfunc.predict(request), sample_uint8(model, 3, seed=5))


def test_conditional_pyfunc_draws_the_requested_label(tmp_path, tracking_uri):
    model = build_model(GANConfig(width=8, latent_dim=4, conditional=True, ema_decay=0.9),
                        (1, 8, 8), seed=0)
    path = save_generator(model, tmp_path / "generator.pt")
    run_id = start_run("dgm-test", "cond", {}, {}, uri=tracking_uri)
    loaded = load_generator_model(log_generator(run_id, path, (1, 8, 8), tracking_uri))
    for label in (0, 7):
        np.testing.assert_array_equal(loaded.predict(5, seed=1, label=label),
                                      sample_uint8(model, 5, seed=1, labels=[label] * 5))
    assert not np.array_equal(loaded.predict(5, seed=1, label=0),
                              loaded.predict(5, seed=1, label=7))
    # no label: classes drawn by the seed, as sample_uint8 without labels
    np.testing.assert_array_equal(loaded.predict(5, seed=1), sample_uint8(model, 5, seed=1))
    with pytest.raises(Exception, match="labels must lie in 0..9"):
        loaded.predict(2, seed=1, label=10)


def test_request_label():
    assert request_label(None, None) is None
    assert request_label(None, {"label": -1}) is None
    assert request_label({"label": [3]}, {"label": -1}) == 3
    assert request_label(pd.DataFrame({"num_samples": [2], "label": [4]}), None) == 4


def test_request_args_validation():
    assert request_args(None, None) == (64, 0)
    assert request_args(None, {"num_samples": 5, "seed": 9}) == (5, 9)
    # input columns win over params (MLflow always passes the declared param defaults)
    assert request_args({"num_samples": [5], "seed": [2]}, {"num_samples": 64, "seed": 0}) \
        == (5, 2)
    with pytest.raises(ValueError):
        request_args(None, {"num_samples": 0})


def test_champion_moves_only_when_the_metric_improves(logged_model, tracking_uri):
    model_uri, run_id, _ = logged_model
    name = "dgm-digits-gan"
    first = register_generator(model_uri, name, "fid", 10.0)
    worse = register_generator(model_uri, name, "fid", 12.0)
    better = register_generator(model_uri, name, "fid", 4.0)
    assert (first.promoted, worse.promoted, better.promoted) == (True, False, True)
    assert worse.champion_version == "1" and worse.champion_value == 10.0
    client = MlflowClient(tracking_uri)
    assert client.get_registered_model(name).description.startswith("dgm generator")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == better.version == "3"
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == worse.version
    loser = client.get_model_version(name, "2").tags
    assert loser["dgm.decision"] == "challenger"
    assert (float(loser["dgm.gating_value"]), float(loser["dgm.incumbent_value"])) == (12.0, 10.0)
    assert loser["dgm.incumbent_version"] == "1" and loser["dgm.gating_metric"] == "fid"
    winner = client.get_model_version(name, "3").tags
    assert winner["dgm.decision"] == "champion" and float(winner["dgm.gating_value"]) == 4.0
    assert float(winner["dgm.incumbent_value"]) == 10.0
    assert "dgm.incumbent_version" not in client.get_model_version(name, "1").tags
    assert len(client.search_model_versions(f"name='{name}'")) == 3  # nothing deleted


def test_gate_direction_and_minimum_improvement(logged_model, tracking_uri):
    model_uri, run_id, _ = logged_model
    name = "dgm-digits-vae"
    register_generator(model_uri, name, "precision", 0.50, "max", 0.05)
    small = register_generator(model_uri, name, "precision", 0.54, "max", 0.05)
    large = register_generator(model_uri, name, "precision", 0.56, "max", 0.05)
    assert (small.promoted, large.promoted) == (False, True)
    assert "challenger" in small.message and "min_delta 0.05" in small.message
    client = MlflowClient(tracking_uri)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == large.version
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == small.version
    with pytest.raises(DgmError, match="not registered"):
        register_generator(model_uri, name, "precision", float("nan"), "max")
    assert len(client.search_model_versions(f"name='{name}'")) == 3


def test_unknown_models_are_one_line_errors(tracking_uri):
    with pytest.raises(DgmError, match="does not exist"):
        resolve_model_uri("models:/nope@champion")
    with pytest.raises(DgmError, match="does not exist"):
        resolve_model_uri("models:/nope/3")


def test_a_model_that_is_not_a_dgm_generator_is_refused(tracking_uri, tmp_path, monkeypatch):
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input  # typed: MLflow warns about an untyped predict

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(),
                                       registered_model_name="not-dgm")
    assert info.registered_model_version == 1
    unpickled = []
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda *a, **k: unpickled.append(a))
    with pytest.raises(DgmError, match="not a dgm generator"):
        load_generator_model("models:/not-dgm/1")
    assert unpickled == []  # refused from its MLmodel file, never loaded


def test_register_and_pull_on_a_tracking_server(mlflow_server_uri, tmp_path, monkeypatch):
    """The same gate against a real `mlflow server` (its registry checks a version's source)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server_uri)
    model = build_model(GANConfig(width=8, latent_dim=4), (1, 8, 8), seed=0)
    path = save_generator(model, tmp_path / "generator.pt", extra={"dataset": "digits"})
    run_id = start_run("dgm-test", "server", {}, {}, uri=mlflow_server_uri)
    model_uri = log_generator(run_id, path, (1, 8, 8), mlflow_server_uri)
    first = register_generator(model_uri, "dgm-srv-gan", "fid", 5.0, uri=mlflow_server_uri)
    second = register_generator(model_uri, "dgm-srv-gan", "fid", 6.0, uri=mlflow_server_uri)
    assert (first.promoted, second.promoted) == (True, False)
    client = MlflowClient(mlflow_server_uri)
    assert client.get_model_version_by_alias("dgm-srv-gan", CHALLENGER).run_id == run_id
    pulled = load_generator_model("models:/dgm-srv-gan@champion")
    np.testing.assert_array_equal(pulled.predict(6, seed=2), sample_uint8(model, 6, seed=2))


def test_the_registry_is_mlflow_registry_uri_when_it_is_set(logged_model, tracking_uri,
                                                             tmp_path, monkeypatch):
    """Runs stay in the tracking store; versions and aliases go to MLFLOW_REGISTRY_URI, and
    ``models:/NAME@champion`` is pulled from there."""
    model_uri, _, model = logged_model
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry)
    decision = register_generator(model_uri, "dgm-test-gan", "fid", 5.0, uri=tracking_uri)
    assert decision.promoted and decision.version == "1"
    version = MlflowClient(registry, registry_uri=registry).get_model_version_by_alias(
        "dgm-test-gan", CHAMPION)
    assert str(version.version) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):
        MlflowClient(tracking_uri, registry_uri=tracking_uri).get_registered_model("dgm-test-gan")
    loaded = load_generator_model("models:/dgm-test-gan@champion")
    np.testing.assert_array_equal(loaded.predict(4, seed=1), sample_uint8(model, 4, seed=1))
    with pytest.raises(DgmError, match=f"does not exist in the registry at {registry}"):
        resolve_model_uri("models:/dgm-test-vae@champion")
