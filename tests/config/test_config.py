"""configs/params.yaml validation: one-line errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dgm.config import Params, load_params
from dgm.errors import DgmError
from dgm.evaluation.metrics import MetricOptions
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
        dumped = typed.model_dump()  # nested sections (data.stacked, ...) as plain dicts
        if section == "tune":  # search dimensions as written: one kind each, lists
            dumped["space"] = {m: {k: d.model_dump(mode="json", exclude_none=True)
                                   for k, d in dims.items()}
                               for m, dims in typed.space.items()}
        assert {k: dumped[k] for k in values} == values, section


def test_empty_file_gives_defaults(tmp_path):
    params = load_params(write(tmp_path, ""))
    assert params == Params()
    assert params.models == {}


def test_unknown_model_name():
    with pytest.raises(DgmError, match=r"unknown model 'flow' \(configured: gan, rbm, vae\)"):
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
        ("data:\n  folder: {resolution: 30}\n", "data.folder.resolution"),
        ("data:\n  folder: {channels: 4}\n", "data.folder.channels"),
    ],
    ids=["not-int", "not-positive", "fraction-above-1", "not-a-literal", "not-auto-or-bool",
         "list-for-float", "side-not-a-multiple-of-4", "four-channels"],
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


# --- evaluate.metrics, evaluate.metric_options, data.stacked --------------------------------
def test_evaluate_metrics_defaults_to_all(tmp_path):
    params = load_params(write(tmp_path, "evaluate:\n  metrics: null\n"))
    assert params.evaluate.metrics is None
    assert params.evaluate.metric_options == MetricOptions()


def test_evaluate_metrics_known_names(tmp_path):
    params = load_params(write(tmp_path, "evaluate:\n  metrics: [fid, kid, swd_pixel]\n"))
    assert params.evaluate.metrics == ["fid", "kid", "swd_pixel"]


def test_evaluate_metrics_unknown_name(tmp_path):
    message = error_of(write(tmp_path, "evaluate:\n  metrics: [fid, fidd]\n"))
    assert "evaluate.metrics:" in message
    assert "fidd" in message


def test_evaluate_metrics_not_a_list(tmp_path):
    assert "evaluate.metrics" in error_of(write(tmp_path, "evaluate:\n  metrics: 3\n"))


def test_evaluate_metric_options(tmp_path):
    text = "evaluate:\n  metric_options:\n    k: 5\n    kid_subsets: 7\n"
    options = load_params(write(tmp_path, text)).evaluate.metric_options
    assert isinstance(options, MetricOptions)
    assert (options.k, options.kid_subsets) == (5, 7)
    assert options.swd_projections == MetricOptions().swd_projections


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("evaluate:\n  metric_options:\n    kk: 3\n",
         "evaluate.metric_options.kk: unknown key"),
        ("evaluate:\n  metric_options:\n    k: 0\n", "evaluate.metric_options.k:"),
        ("evaluate:\n  metric_options:\n    memorization_quantile: 1.0\n",
         "evaluate.metric_options.memorization_quantile:"),
        ("evaluate:\n  nll_importance_samples: 0\n", "evaluate.nll_importance_samples:"),
        ("evaluate:\n  nll_max_images: -1\n", "evaluate.nll_max_images:"),
        ("evaluate:\n  nll_samples: 3\n", "evaluate.nll_samples: unknown key"),
    ],
    ids=["unknown-option", "k-zero", "quantile-1", "nll-samples-0", "nll-images-neg",
         "unknown-nll-key"],
)
def test_evaluate_options_validated(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert expected in error_of(path)


def test_data_stacked(tmp_path):
    text = "data:\n  name: stacked-mnist\n  stacked:\n    train_size: 100\n    seed: 4\n"
    params = load_params(write(tmp_path, text))
    assert params.data.name == "stacked-mnist"
    stacked = params.data.stacked
    assert (stacked.train_size, stacked.test_size, stacked.seed) == (100, 10_000, 4)
    assert load_params(write(tmp_path, "")).data.stacked.model_dump() == {
        "train_size": 60_000, "test_size": 10_000, "seed": 0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data:\n  stacked:\n    train_size: 0\n", "data.stacked.train_size:"),
        ("data:\n  stacked:\n    test_size: 1\n", "data.stacked.test_size:"),
        ("data:\n  stacked:\n    train_size: many\n", "data.stacked.train_size:"),
        ("data:\n  stacked:\n    channels: 3\n", "data.stacked.channels: unknown key"),
        ("data:\n  stacked:\n    trian_size: 10\n", "data.stacked.trian_size: unknown key"),
        ("data:\n  stacked: 5\n", "data.stacked:"),
    ],
    ids=["train-size-0", "test-size-1", "not-int", "channels-not-configurable", "typo",
         "not-a-mapping"],
)
def test_data_stacked_validated(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, text))
