"""configs/params.yaml validation: one-line errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dgm.config import Params, load_params
from dgm.errors import DgmError
from dgm.models.gan import GANConfig
from dgm.models.vae import VAEConfig

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "configs" / "params.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(DgmError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


def test_default_params_file_loads():
    params = load_params(PARAMS)
    assert isinstance(params.model("gan"), GANConfig)
    assert isinstance(params.model("vae"), VAEConfig)
    assert params.train.use_gpu in ("auto", True, False)
    # Every value written in the file arrives unchanged in the typed params.
    raw = yaml.safe_load(PARAMS.read_text())
    for section, values in raw.items():
        if section == "models":
            assert set(params.models) == set(values)
            for name, cfg in values.items():
                dumped = params.model(name).model_dump()
                assert dumped["family"] == cfg.get("family", name)
                assert {k: dumped[k] for k in cfg} == cfg, name
            continue
        typed = getattr(params, "register_" if section == "register" else section)
        assert {k: getattr(typed, k) for k in values} == values, section


def test_empty_file_gives_defaults(tmp_path):
    params = load_params(write(tmp_path, ""))
    assert params == Params()
    assert params.models == {}


def test_unknown_model_name():
    with pytest.raises(DgmError, match=r"unknown model 'flow' \(configured: gan, vae\)"):
        load_params(PARAMS).model("flow")
    with pytest.raises(DgmError, match=r"configured: none"):
        Params().model("gan")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("trainz:\n  epochs: 3\n", "trainz"),
        ("train:\n  epochz: 3\n", "train.epochz"),
        ("data:\n  nmae: mnist\n", "data.nmae"),
        ("register:\n  metrc: fid\n", "register.metrc"),
    ],
    ids=["top-level", "train", "data", "register"],
)
def test_unknown_key(tmp_path, text, key):
    path = write(tmp_path, text)
    message = error_of(path)
    assert f"{path}: {key}: unknown key" == message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("models:\n  gan:\n    foo: 1\n", "models.gan.foo"),
        ("models:\n  small:\n    family: vae\n    widht: 8\n", "models.small.widht"),
    ],
    ids=["keyed-by-family", "named-model"],
)
def test_unknown_model_key_names_the_dotted_key(tmp_path, text, key):
    path = write(tmp_path, text)
    assert f"{path}: {key}: unknown key" == error_of(path)


def test_unknown_model_key_is_a_one_line_error(tmp_path):
    path = write(tmp_path, "models:\n  gan:\n    foo: 1\n")
    message = error_of(path)
    assert "foo: unknown key" in message and "models.gan" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train:\n  epochs: abc\n", "train.epochs"),
        ("train:\n  epochs: 0\n", "train.epochs"),
        ("data:\n  val_fraction: 1.5\n", "data.val_fraction"),
        ("register:\n  mode: avg\n", "register.mode"),
        ("train:\n  use_gpu: maybe\n", "train.use_gpu"),
        ("evaluator:\n  lr: [1, 2]\n", "evaluator.lr"),
    ],
    ids=["not-int", "not-positive", "fraction-above-1", "not-a-literal", "not-auto-or-bool",
         "list-for-float"],
)
def test_wrong_type_or_value_names_the_key(tmp_path, text, key):
    message = error_of(write(tmp_path, text))
    assert f": {key}" in message


def test_several_problems_in_one_line(tmp_path):
    message = error_of(write(tmp_path, "train:\n  epochs: abc\n  epochz: 1\n"))
    assert "train.epochs:" in message and "train.epochz: unknown key" in message
    assert "; " in message


def test_models_get_family_from_their_key(tmp_path):
    params = load_params(write(tmp_path, "models:\n  gan:\n    width: 8\n  vae: {}\n"))
    assert isinstance(params.models["gan"], GANConfig) and params.models["gan"].width == 8
    assert isinstance(params.models["vae"], VAEConfig)
    assert params.models["vae"].family == "vae"


def test_named_model_with_explicit_family(tmp_path):
    text = "models:\n  small_vae:\n    family: vae\n    width: 8\n  gan2:\n    family: gan\n"
    params = load_params(write(tmp_path, text))
    assert params.model("small_vae") == VAEConfig(width=8)
    assert params.model("gan2") == GANConfig()


def test_explicit_family_wins_over_the_key(tmp_path):
    params = load_params(write(tmp_path, "models:\n  gan:\n    family: vae\n"))
    assert isinstance(params.models["gan"], VAEConfig)


@pytest.mark.parametrize(
    "text",
    [
        "models:\n  foo:\n    latent_dim: 3\n",  # no family, key is not a family
        "models:\n  foo:\n    family: flow\n",  # unknown family
    ],
    ids=["no-family", "unknown-family"],
)
def test_model_of_unknown_family(tmp_path, text):
    message = error_of(write(tmp_path, text))
    assert "models.foo" in message
    assert "family" in message


def test_model_section_not_a_mapping(tmp_path):
    assert "models.vae" in error_of(write(tmp_path, "models:\n  vae: 3\n"))


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("null", None), ("500", 500)])
def test_max_steps(tmp_path, value, expected):
    line = "{}" if value is None else f"{{max_steps: {value}}}"
    params = load_params(write(tmp_path, f"train: {line}\nevaluator: {line}\n"))
    assert params.train.max_steps == expected
    assert params.evaluator.max_steps == expected


def test_max_steps_must_be_positive(tmp_path):
    assert ": train.max_steps" in error_of(write(tmp_path, "train:\n  max_steps: 0\n"))


def test_invalid_yaml(tmp_path):
    message = error_of(write(tmp_path, "train: [1, 2\ndata: {\n"))
    assert "invalid YAML" in message


def test_top_level_not_a_mapping(tmp_path):
    assert "expected a mapping" in error_of(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(DgmError, match="config file not found") as info:
        load_params(path)
    assert str(path) in str(info.value)
