"""Model families by name; configs, weights and training state round trips."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from dgm.errors import DgmError
from dgm.models.gan import DCGAN, GANConfig
from dgm.models.rbm import RBM, RBMConfig
from dgm.models.registry import (
    FAMILIES,
    MODEL_CONFIGS,
    build_model,
    check_classes,
    config_from_dict,
)
from dgm.models.vae import VAE, VAEConfig

CONFIGS = {
    "gan": GANConfig(latent_dim=8, width=4, lr_g=1e-3, lr_d=3e-3, beta1=0.4),
    "vae": VAEConfig(latent_dim=4, width=4, lr=5e-3, beta=0.5),
}


def test_families():
    assert FAMILIES == {"gan": DCGAN, "vae": VAE, "rbm": RBM}
    assert MODEL_CONFIGS == {"gan": GANConfig, "vae": VAEConfig, "rbm": RBMConfig}


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_build_model_picks_the_family(family):
    model = build_model(CONFIGS[family], (1, 8, 8))
    assert isinstance(model, FAMILIES[family])
    assert model.family == family
    assert model.image_shape == (1, 8, 8)
    assert model.config is CONFIGS[family]


def test_build_model_unknown_family():
    with pytest.raises(DgmError, match="unknown model family 'flow'"):
        build_model(SimpleNamespace(family="flow"), (1, 8, 8))
    with pytest.raises(DgmError, match="unknown model family None"):
        build_model(SimpleNamespace(), (1, 8, 8))


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_build_model_seed_fixes_initial_weights(family):
    a = build_model(CONFIGS[family], (1, 8, 8), seed=3).weights()
    b = build_model(CONFIGS[family], (1, 8, 8), seed=3).weights()
    c = build_model(CONFIGS[family], (1, 8, 8), seed=4).weights()
    for net in a:
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net])
    assert any(not torch.equal(a[n][k], c[n][k]) for n in a for k in a[n] if k.endswith("weight"))


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_config_from_dict_round_trips_model_dump(family):
    config = CONFIGS[family]
    dumped = config.model_dump()
    assert dumped["family"] == family
    rebuilt = config_from_dict(dumped)
    assert type(rebuilt) is type(config)
    assert rebuilt == config


@pytest.mark.parametrize("data", [{"family": "flow"}, {}, {"latent_dim": 3}])
def test_config_from_dict_unknown_family(data):
    with pytest.raises(DgmError, match="unknown model family"):
        config_from_dict(data)


def trained(family, seed, steps=3):
    model = build_model(CONFIGS[family], (1, 8, 8), seed=seed).setup()
    torch.manual_seed(seed)
    for _ in range(steps):
        model.train_step(torch.rand(8, 1, 8, 8), None)
    return model


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_weights_round_trip_gives_identical_samples(family):
    source = trained(family, seed=0)
    target = build_model(CONFIGS[family], (1, 8, 8), seed=1)
    gen = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    assert not torch.equal(source.sample(6, gen()), target.sample(6, gen()))
    weights = source.weights()
    assert set(weights) == set(source.networks)
    assert all(t.device.type == "cpu" for w in weights.values() for t in w.values())
    target.load_weights(weights)
    assert torch.equal(source.sample(6, gen()), target.sample(6, gen()))


def test_weights_include_batchnorm_buffers():
    weights = trained("gan", seed=0).weights()
    assert "project.1.running_mean" in weights["G"]
    assert weights["G"]["project.1.num_batches_tracked"].item() == 3


def serialize(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_training_state_round_trip_resumes_identically(family):
    source = trained(family, seed=0)
    state = serialize(source.training_state())
    assert set(state["optimizers"]) == set(source.optimizers)
    resumed = build_model(CONFIGS[family], (1, 8, 8), seed=1).setup()
    resumed.load_training_state(state)
    batch = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    expected = source.train_step(batch, None)
    torch.manual_seed(5)
    got = resumed.train_step(batch, None)
    assert got == expected
    a, b = source.weights(), resumed.weights()
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)


def test_optimizer_state_is_restored():
    source = trained("vae", seed=0, steps=4)
    resumed = build_model(CONFIGS["vae"], (1, 8, 8), seed=1).setup()
    resumed.load_training_state(serialize(source.training_state()))
    state = resumed.optimizers["net"].state_dict()
    assert state["param_groups"][0]["lr"] == 5e-3
    assert all(s["step"].item() == 4 for s in state["state"].values())


def test_setup_wraps_every_network_and_weights_unwrap():
    model = build_model(CONFIGS["gan"], (1, 8, 8), seed=0)
    seen = []

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    def wrap(module, kwargs):
        seen.append(kwargs)
        return Wrapper(module)

    model.setup(wrap)
    assert isinstance(model.G, Wrapper) and isinstance(model.D, Wrapper)
    assert seen == [{}, {"forward_sync_buffers": False}]
    assert set(model.optimizers) == {"G", "D"}
    # Saved weights carry no wrapper prefix.
    assert not any(k.startswith("module.") for k in model.weights()["D"])
    assert model.sample(2, torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)


def test_conditional_models_need_the_datasets_classes():
    conditional = GANConfig(conditional=True, num_classes=10)
    check_classes(conditional, 10, "digits", "cgan")
    check_classes(GANConfig(), 0, "folder", "gan")  # unconditional: any data
    with pytest.raises(DgmError, match="models.cgan is conditional but folder is unlabelled"):
        check_classes(conditional, 0, "folder", "cgan")
    with pytest.raises(DgmError, match="num_classes is 10 but shapes has 4 classes"):
        check_classes(conditional, 4, "shapes", "cgan")
