"""Networks sized from the image: one stride-2 block per factor of 2, today's shapes kept."""

from __future__ import annotations

import hashlib

import pytest
import torch

from dgm.errors import DgmError
from dgm.models.base import ScalePlan, scale_plan
from dgm.models.gan import DCGAN, GANConfig
from dgm.models.vae import VAE, VAEConfig

GAN_CASES = {"gan": {}, "gan-hinge": {"loss": "hinge"}, "gan-wgan": {"loss": "wgan-gp"},
             "gan-cond": {"conditional": True, "num_classes": 10},
             "gan-info": {"info_categorical": 10, "info_continuous": 2}, "gan-pack": {"pack": 2}}
VAE_CASES = {"vae": {}, "vae-cond": {"conditional": True, "num_classes": 10}}
# (parameters, hash of the state dict's names and shapes, hash of the weights at seed 0),
# recorded from the fixed two-block networks before they became resolution-aware: the
# digits and MNIST configs build, and initialise, exactly the networks they did.
BEFORE = {
    ("gan", 8): (282562, "758314cf8f7e", "ff878e2c885b"),
    ("gan-hinge", 8): (282434, "e096a08310fd", "d5f050c52cd3"),  # without SN vectors
    ("gan-wgan", 8): (282434, "c7cfbd721fdc", "50597e8eb89c"),
    ("gan-cond", 8): (292802, "b114940f8775", None),
    ("gan-info", 8): (355918, "73f8d7a33431", None),
    ("gan-pack", 8): (283586, "34455211e94c", None),
    ("vae", 8): (79266, "183fe7a18632", None),
    ("vae-cond", 8): (82146, "db484e2aef0b", None),
    ("gan", 28): (484162, "7623cdc11dbd", None),
    ("gan-hinge", 28): (484034, "a54ff57b3d94", None),
    ("gan-wgan", 28): (484034, "18abbf7b8595", None),
    ("gan-cond", 28): (609602, "795a1a274432", None),
    ("gan-info", 28): (1363918, "93136e8db27c", None),
    ("gan-pack", 28): (485186, "6e6cb9635074", None),
    ("vae", 28): (220386, "8634a4618e90", None),
    ("vae-cond", 28): (252066, "434c79990a80", None),
}


def _build(name: str, side: int, channels: int = 1, **extra):
    if name.startswith("vae"):
        return VAE(VAEConfig(**VAE_CASES[name], **extra), (channels, side, side))
    return DCGAN(GANConfig(**GAN_CASES[name], **extra), (channels, side, side))


def _signature(model: torch.nn.Module) -> tuple[int, str, str]:
    state = model.state_dict()
    names = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    # not spectral norm's power-iteration vectors (``…._u``/``…._v``): matmuls at
    # initialisation whose last bits depend on the CPU's BLAS kernels
    weights = b"".join(v.double().numpy().tobytes() for k, v in state.items()
                       if v.is_floating_point() and not k.endswith(("._u", "._v")))
    return (sum(p.numel() for p in model.parameters()),
            hashlib.sha256(names.encode()).hexdigest()[:12],
            hashlib.sha256(weights).hexdigest()[:12])


@pytest.mark.parametrize(("name", "side"), sorted(BEFORE))
def test_digits_and_mnist_keep_their_networks(name: str, side: int):
    torch.manual_seed(0)
    count, names, weights = _signature(_build(name, side))
    expected = BEFORE[(name, side)]
    assert (count, names) == expected[:2]
    if expected[2] is not None:  # same modules in the same order: the same initial weights
        assert weights == expected[2]


@pytest.mark.parametrize(("side", "base", "blocks"), [
    (8, (2, 2), 2), (28, (7, 7), 2), (16, (4, 4), 2), (32, (4, 4), 3), (64, (4, 4), 4),
    (128, (4, 4), 5), (96, (6, 6), 4), (56, (7, 7), 3)])
def test_one_block_per_factor_of_two(side: int, base: tuple[int, int], blocks: int):
    assert scale_plan((3, side, side)) == ScalePlan(base, blocks)


def test_widths_halve_as_resolution_doubles_and_stop_at_eight_times():
    assert ScalePlan((4, 4), 5).widths(16) == [16, 32, 64, 128, 128]
    assert scale_plan((3, 64, 48)) == ScalePlan((8, 6), 3)  # together, the shorter side decides
    with pytest.raises(DgmError, match="divisible by 4"):
        scale_plan((1, 30, 30))


# parameters of G and D (width 32, RGB): the 4·4·(in·out) kernels add up per block
SIZES = {("dcgan", 32): (235203, 167841), ("dcgan", 64): (829379, 694689),
         ("dcgan", 128): (1878467, 1743777), ("resnet", 32): (237539, 297697),
         ("resnet", 64): (781411, 1216097), ("resnet", 128): (2028387, 2462049),
         ("dcgan", 8): (43075, 34721), ("dcgan", 28): (140995, 37601)}


@pytest.mark.parametrize(("architecture", "side"), sorted(SIZES))
def test_gan_forward_and_sizes(architecture: str, side: int):
    torch.manual_seed(0)
    model = DCGAN(GANConfig(architecture=architecture, width=32, latent_dim=32), (3, side, side))
    assert (sum(p.numel() for p in model.G.parameters()),
            sum(p.numel() for p in model.D.parameters())) == SIZES[(architecture, side)]
    images = model.G(torch.randn(3, 32))
    assert images.shape == (3, 3, side, side) and images.abs().max() <= 1.0
    assert model.D(images).shape == (3,)


def test_dcgan_128_has_five_up_blocks_from_a_4px_base():
    model = DCGAN(GANConfig(width=16), (3, 128, 128))
    ups = [m for m in model.G.upsample if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in ups] == [
        (128, 128), (128, 64), (64, 32), (32, 16), (16, 3)]
    downs = [m for m in model.D.body if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in downs] == [16, 32, 64, 128, 128]
    assert model.G.base == (4, 4) and model.G.top == 128


def test_resnet_is_refused_below_32px_in_one_line():
    with pytest.raises(DgmError, match="at least 32 px.*use dcgan"):
        DCGAN(GANConfig(architecture="resnet"), (1, 28, 28))


@pytest.mark.parametrize("side", [8, 28, 32, 64, 128])
def test_vae_forward_at_every_resolution(side: int):
    model = VAE(VAEConfig(width=16, latent_dim=8), (3, side, side))
    logits, z, mu, _, _ = model.net(torch.rand(2, 3, side, side))
    assert logits.shape == (1, 2, 3, side, side) and z.shape == (1, 2, 8)
    convs = [m for m in model.net.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == scale_plan((3, side, side)).blocks
    assert model.sample(2).shape == (2, 3, side, side)


@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_resnet_gan_trains_at_32px(loss: str):
    torch.manual_seed(0)
    model = DCGAN(GANConfig(architecture="resnet", width=8, loss=loss), (3, 32, 32)).setup()
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    before = [p.detach().clone() for p in model.G.parameters()]
    metrics = model.train_step(real, None)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.G.parameters(), strict=True))
