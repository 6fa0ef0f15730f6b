"""Search spaces from the params: dimensions, checks against the model configs, one-line
errors for unknown names, empty or inverted ranges and values a config refuses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray import tune

from dgm.config import load_params
from dgm.errors import DgmError
from dgm.models.gan import GANConfig
from dgm.models.rbm import RBMConfig
from dgm.tuning.space import (
    Dimension,
    apply_overrides,
    check_space,
    grid_points,
    to_param_space,
)

REPO = Path(__file__).resolve().parents[2]


def params_file(tmp_path: Path, tune: dict, models: dict | None = None) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"models": models or {"gan": {}, "vae": {}}, "tune": tune}))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(DgmError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("spec, kind", [
    ({"loguniform": [1e-4, 1e-2]}, "loguniform"), ({"uniform": [0.0, 1.0]}, "uniform"),
    ({"randint": [1, 3]}, "randint"), ({"choice": ["a", "b"]}, "choice"),
])
def test_dimension_kinds(spec, kind):
    assert Dimension.model_validate(spec).kind == kind


@pytest.mark.parametrize("spec, fragment", [
    ({"loguniform": [1e-2, 1e-4]}, "inverted"),
    ({"uniform": [1.0, 1.0]}, "empty or inverted"),
    ({"randint": [5, 2]}, "inverted"),
    ({"choice": []}, "empty choice"),
    ({"loguniform": [0.0, 1.0]}, "greater than 0"),
    ({}, "exactly one"),
    ({"uniform": [0, 1], "choice": [1]}, "exactly one"),
    ({"normal": [0, 1]}, "Extra inputs"),
])
def test_bad_dimensions(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        Dimension.model_validate(spec)


def test_samplers_cover_their_ranges():
    space = to_param_space({
        "lr": Dimension(loguniform=(1e-4, 1e-2)), "k": Dimension(randint=(1, 3)),
        "loss": Dimension(choice=["hinge", "lsgan"]), "beta": Dimension(uniform=(0.5, 2.0))})
    assert isinstance(space["lr"], tune.search.sample.Float)
    rng = np.random.default_rng(0)
    lrs = np.array(space["lr"].sample(size=4000, random_state=rng))
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
    # log-uniform: log10 is uniform on [-4, -2], so its mean is -3 and a quarter lies below -3.5
    assert abs(np.log10(lrs).mean() + 3) < 0.05
    assert abs((np.log10(lrs) < -3.5).mean() - 0.25) < 0.03
    ks = np.array(space["k"].sample(size=3000, random_state=rng))
    assert set(ks.tolist()) == {1, 2, 3}  # both bounds included
    betas = np.array(space["beta"].sample(size=3000, random_state=rng))
    assert 0.5 <= betas.min() and betas.max() <= 2.0 and abs(betas.mean() - 1.25) < 0.03
    assert set(space["loss"].sample(size=200, random_state=rng)) == {"hinge", "lsgan"}


def test_grid_points_enumerate_every_combination():
    points = grid_points({"loss": Dimension(choice=["hinge", "lsgan"]),
                          "n_critic": Dimension(randint=(1, 3))})
    assert len(points) == 6
    assert {(p["loss"], p["n_critic"]) for p in points} == {
        (loss, k) for loss in ("hinge", "lsgan") for k in (1, 2, 3)}
    with pytest.raises(DgmError, match="continuous"):
        grid_points({"lr": Dimension(loguniform=(1e-4, 1e-3))})


def test_check_space_accepts_the_default_params():
    params = load_params(REPO / "configs" / "params.yaml")
    for name in params.models:
        check_space(params.search_space(name), params.model(name), f"tune.space.{name}")
    assert params.tune.models == ["gan"]


def test_unknown_hyperparameter():
    with pytest.raises(DgmError, match=r"tune.space.gan.lr_x: unknown hyperparameter of gan"):
        check_space({"lr_x": Dimension(uniform=(0, 1))}, GANConfig(), "tune.space.gan")


@pytest.mark.parametrize("dim, fragment", [
    (Dimension(choice=["nonsaturating", "wasserstein"]), "'wasserstein' is not accepted"),
    (Dimension(randint=(0, 3)), "0 is not accepted"),
])
def test_values_the_config_refuses(dim, fragment):
    name = "loss" if dim.kind == "choice" else "n_critic"
    with pytest.raises(DgmError, match=fragment):
        check_space({name: dim}, GANConfig(), "tune.space.gan")


def test_apply_overrides_validates_the_whole_config():
    cfg = apply_overrides(RBMConfig(), {"cd_k": 3, "lr": 0.02})
    assert (cfg.cd_k, cfg.lr, cfg.hidden) == (3, 0.02, RBMConfig().hidden)
    with pytest.raises(DgmError, match="cd_k"):
        apply_overrides(RBMConfig(), {"cd_k": 0})


def test_params_errors_are_one_line(tmp_path):
    space = {"gan": {"lr_g": {"loguniform": [1e-4, 1e-3]}}}
    assert load_params(params_file(tmp_path, {"models": ["gan"], "space": space})).tune.models \
        == ["gan"]
    cases = [
        ({"models": ["gan"], "space": {"gan": {"lrr": {"uniform": [0, 1]}}}},
         "tune.space.gan.lrr: unknown hyperparameter of gan"),
        ({"models": ["gan"], "space": {"gan": {"lr_g": {"loguniform": [1e-3, 1e-4]}}}},
         "tune.space.gan.lr_g"),
        ({"models": ["gan"], "space": {"gan": {"lr_g": {"uniform": []}}}}, "tune.space.gan.lr_g"),
        ({"models": ["gen"], "space": space}, "tune.models: unknown model 'gen'"),
        ({"models": ["vae"], "space": space}, "no entry for 'vae'"),
        ({"models": [], "space": {"gaan": {}}}, "tune.space.gaan: neither a model nor a family"),
        ({"models": ["gan"], "space": {"gan": {}}}, "search space is empty"),
        ({"models": ["gan"], "space": space, "epochs": 2, "grace_period": 3},
         "grace_period"),
        ({"models": ["gan"], "space": space, "metric": "fidd"}, "unknown validation metric"),
        ({"models": ["gan"], "space": space, "searcher": "bayes"}, "tune.searcher"),
        ({"models": ["gan"], "space": space, "num_workers": 0}, "tune.num_workers"),
    ]
    for tune_cfg, fragment in cases:
        assert fragment in error_of(params_file(tmp_path, tune_cfg)), tune_cfg


def test_a_model_key_space_overrides_its_family(tmp_path):
    models = {"gan": {}, "cgan": {"family": "gan", "conditional": True}}
    tune_cfg = {"models": ["gan", "cgan"],
                "space": {"gan": {"lr_g": {"loguniform": [1e-4, 1e-3]}},
                          "cgan": {"lr_d": {"uniform": [1e-4, 2e-4]}}}}
    params = load_params(params_file(tmp_path, tune_cfg, models))
    assert set(params.search_space("gan")) == {"lr_g"}
    assert set(params.search_space("cgan")) == {"lr_d"}
    assert math.isclose(params.search_space("cgan")["lr_d"].uniform[1], 2e-4)
