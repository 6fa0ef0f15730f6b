"""``generator.pt``: save/load round trip, errors, and per-batch seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgm.errors import DgmError
from dgm.models.gan import GANConfig
from dgm.models.generator import (
    FORMAT,
    batch_seed,
    load_generator,
    sample_uint8,
    save_generator,
)
from dgm.models.registry import build_model
from dgm.models.vae import VAEConfig

CONFIGS = {"gan": GANConfig(latent_dim=8, width=4), "vae": VAEConfig(latent_dim=4, width=4)}


def trained(family, shape=(1, 8, 8)):
    model = build_model(CONFIGS[family], shape, seed=0).setup()
    torch.manual_seed(0)
    for _ in range(2):
        model.train_step(torch.rand(8, *shape), None)
    return model


@pytest.mark.parametrize("family", ["gan", "vae"])
def test_save_load_round_trip(family, tmp_path):
    model = trained(family, (3, 12, 8))
    path = save_generator(model, tmp_path / "sub" / "generator.pt", extra={"dataset": "toy"})
    assert path == tmp_path / "sub" / "generator.pt" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["generator.pt"]  # no temp files left
    loaded = load_generator(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert loaded.image_shape == (3, 12, 8)
    assert loaded.extra == {"dataset": "toy"}
    assert not loaded.training
    a, b = sample_uint8(model, 10, seed=4), sample_uint8(loaded, 10, seed=4)
    assert a.dtype == np.uint8 and a.shape == (10, 12, 8, 3)
    np.testing.assert_array_equal(a, b)


def test_saved_file_is_plain_data(tmp_path):
    path = save_generator(trained("vae"), tmp_path / "g.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT
    assert payload["config"] == CONFIGS["vae"].model_dump()
    assert payload["image_shape"] == [1, 8, 8]
    assert payload["extra"] == {}


def test_sample_uint8_depends_on_seed_only():
    model = trained("gan")
    a = sample_uint8(model, 6, seed=1)
    assert np.array_equal(a, sample_uint8(model, 6, seed=1))
    assert not np.array_equal(a, sample_uint8(model, 6, seed=2))


def test_load_missing_file(tmp_path):
    with pytest.raises(DgmError, match="generator file not found"):
        load_generator(tmp_path / "nope.pt")


@pytest.mark.parametrize("payload", [{"weights": {}}, {"format": "dgm-evaluator/1"}, [1, 2]])
def test_load_non_dgm_torch_file(tmp_path, payload):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(DgmError, match="is not a dgm generator"):
        load_generator(path)


def test_load_non_torch_file(tmp_path):
    path = tmp_path / "generator.pt"
    path.write_text("hello")
    with pytest.raises(DgmError):
        load_generator(path)


def test_load_unknown_family(tmp_path):
    path = save_generator(trained("vae"), tmp_path / "g.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["family"] = "flow"
    torch.save(payload, path)
    with pytest.raises(DgmError, match="unknown model family 'flow'"):
        load_generator(path)


def _drop_a_tensor(payload):
    del payload["weights"]["G"][next(iter(payload["weights"]["G"]))]


def _resize_a_tensor(payload):
    key = next(iter(payload["weights"]["G"]))
    payload["weights"]["G"][key] = torch.zeros(3)


def _drop_a_network(payload):
    del payload["weights"]["D"]


def _bad_config(payload):
    payload["config"]["latent_dim"] = -1


@pytest.mark.parametrize("damage", [_drop_a_tensor, _resize_a_tensor, _drop_a_network,
                                    _bad_config])
def test_load_damaged_generator_is_one_line(tmp_path, damage):
    path = save_generator(trained("gan"), tmp_path / "generator.pt")
    payload = torch.load(path, weights_only=True)
    damage(payload)
    torch.save(payload, path)
    with pytest.raises(DgmError, match=r"generator.pt: a damaged dgm generator \(") as info:
        load_generator(path)
    assert "\n" not in str(info.value)


def test_batch_seed_distinct_and_stable():
    seeds = [batch_seed(7, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert seeds == [batch_seed(7, i) for i in range(1000)]
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)
    # Different run seeds give different streams, and (seed, index) is ordered.
    assert set(seeds).isdisjoint(batch_seed(8, i) for i in range(1000))
    assert batch_seed(1, 2) != batch_seed(2, 1)
