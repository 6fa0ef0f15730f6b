"""GAN variants: InfoGAN's loss and Q head, the projection discriminator, G's inputs,
conditional sampling, the EMA of G, validation, weight decay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from dgm.data.loading import load_split_tensors
from dgm.errors import DgmError
from dgm.models.base import eval_mode, unwrap
from dgm.models.gan import DCGAN, GANConfig, info_loss

SHAPE = (1, 8, 8)


def make_gan(seed: int = 0, **cfg) -> DCGAN:
    torch.manual_seed(seed)
    return DCGAN(GANConfig(**{"latent_dim": 8, "width": 4, **cfg}), SHAPE).setup()


def snapshot(model: DCGAN) -> dict[str, dict[str, torch.Tensor]]:
    return {net: {k: v.clone() for k, v in w.items()} for net, w in model.weights().items()}


def labels_of(n: int) -> torch.Tensor:
    return torch.arange(n) % 10


# --- info_loss in closed form -------------------------------------------------------------

def test_info_loss_categorical_is_the_cross_entropy():
    logits = torch.tensor([[4.0, -1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    categories = torch.tensor([0, 2, 1])
    # cross-entropy by hand: mean of logsumexp(row) - row[category]
    expected = sum(math.log(sum(math.exp(v) for v in row)) - row[c]
                   for row, c in zip(logits.tolist(), categories.tolist(), strict=True)) / 3
    value = info_loss(logits, categories, None).item()
    assert value == pytest.approx(expected, rel=1e-6)
    assert value == pytest.approx(F.cross_entropy(logits, categories).item(), rel=1e-6)
    # confidently right logits give (nearly) no loss, confidently wrong a large one
    sure = torch.eye(3) * 50
    assert info_loss(sure, torch.tensor([0, 1, 2]), None).item() == pytest.approx(0, abs=1e-6)
    assert info_loss(sure, torch.tensor([1, 2, 0]), None).item() == pytest.approx(50, rel=1e-6)


def test_info_loss_continuous_is_half_the_squared_error_summed_then_averaged():
    means = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
    codes = torch.tensor([[0.0, 0.5], [-1.0, 0.25]])
    # row 1: 0.25 + 1 = 1.25; row 2: 4 + 0.0625 = 4.0625 → 0.5 · mean = 1.328125
    assert info_loss(means, None, codes).item() == pytest.approx(0.5 * (1.25 + 4.0625) / 2)
    assert info_loss(codes.clone(), None, codes).item() == 0.0  # Q predicts perfectly


def test_info_loss_of_both_codes_adds_the_parts():
    torch.manual_seed(0)
    logits, means = torch.randn(5, 4), torch.randn(5, 2)
    categories, codes = torch.tensor([0, 3, 1, 2, 3]), torch.rand(5, 2) * 2 - 1
    both = info_loss(torch.cat([logits, means], 1), categories, codes).item()
    ce = F.cross_entropy(logits, categories).item()
    gauss = 0.5 * ((means - codes) ** 2).sum(1).mean().item()
    assert both == pytest.approx(ce + gauss, rel=1e-6)
    assert both == pytest.approx(info_loss(logits, categories, None).item()
                                 + info_loss(means, None, codes).item(), rel=1e-6)
    # perfect continuous means leave exactly the categorical part
    exact = info_loss(torch.cat([logits, codes], 1), categories, codes).item()
    assert exact == pytest.approx(ce, rel=1e-6)


# --- the discriminator -------------------------------------------------------------------

@pytest.mark.parametrize(("cfg", "width"), [
    ({}, None),
    ({"info_categorical": 3, "info_continuous": 2}, 6),
    ({"conditional": True, "info_categorical": 4}, 5),
])
def test_discriminator_output_shape(cfg, width):
    model = make_gan(**cfg)
    labels = labels_of(6) if cfg.get("conditional") else None
    out = model.D(torch.rand(6, *SHAPE), labels)
    assert out.shape == ((6,) if width is None else (6, width))
    logits, q = model.split_d(out)
    assert logits.shape == (6,)
    assert (q is None) if width is None else q.shape == (6, width - 1)


@pytest.mark.parametrize("loss", ["nonsaturating", "hinge"])
def test_projection_discriminator_adds_the_class_embedding_inner_product(loss):
    model = make_gan(conditional=True, loss=loss)
    d = model.D
    spectral = torch.nn.utils.parametrize.is_parametrized(d.embed)
    assert spectral == (loss == "hinge")
    with torch.no_grad():  # a non-trivial projection (the init is tiny)
        raw = d.embed.parametrizations.weight.original if spectral else d.embed.weight
        raw.normal_(0, 0.5)
    image = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    images, labels = image.expand(10, *SHAPE), torch.arange(10)
    with torch.no_grad(), eval_mode(d):
        logits = d(images, labels)
        h = d.body(images)
        by_hand = d.out(h).squeeze(1) + (d.embed(labels) * h).sum(1)
        unconditional = d.out(h).squeeze(1)
    torch.testing.assert_close(logits, by_hand, rtol=1e-5, atol=1e-6)
    assert torch.allclose(unconditional, unconditional[0].expand(10))  # same image
    assert len(set(logits.tolist())) == 10  # the label changes the logit
    assert (logits.max() - logits.min()).item() > 1e-4


def test_projection_and_q_head_together():
    model = make_gan(conditional=True, info_categorical=3, info_continuous=1)
    d = model.D
    images = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 7, 7, 2])
    with torch.no_grad(), eval_mode(d):
        out = d(images, labels)
        h = d.body(images)
        torch.testing.assert_close(out[:, 0], d.out(h).squeeze(1) + (d.embed(labels) * h).sum(1))
        torch.testing.assert_close(out[:, 1:], d.q(h))


# --- G's input ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    {},
    {"conditional": True},
    {"info_categorical": 4},
    {"info_continuous": 3},
    {"conditional": True, "num_classes": 5, "info_categorical": 3, "info_continuous": 2},
])
def test_generator_input_layout(cfg):
    model = make_gan(**cfg)
    c = model.config
    n = 64
    labels = torch.arange(n) % c.num_classes if c.conditional else None
    z, categories, continuous = model.generator_input(n, labels,
                                                      torch.Generator().manual_seed(1))
    classes = c.num_classes if c.conditional else 0
    assert z.shape == (n, 8 + classes + c.info_categorical + c.info_continuous)
    assert z.shape[1] == c.latent_dim + c.code_dim
    # G accepts it
    assert model.G(z).shape == (n, *SHAPE)
    start = c.latent_dim
    if c.conditional:
        block = z[:, start:start + classes]
        assert torch.equal(block, F.one_hot(labels, classes).float())
        start += classes
    if c.info_categorical:
        block = z[:, start:start + c.info_categorical]
        assert set(block.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(block.sum(1), torch.ones(n))
        assert torch.equal(block.argmax(1), categories)
        assert categories.min() >= 0 and categories.max() < c.info_categorical
        assert categories.unique().numel() == c.info_categorical  # 64 draws hit every class
        start += c.info_categorical
    else:
        assert categories is None
    if c.info_continuous:
        block = z[:, start:]
        assert torch.equal(block, continuous)
        assert continuous.shape == (n, c.info_continuous)
        assert continuous.min() >= -1 and continuous.max() <= 1
        assert continuous.min() < -0.5 and continuous.max() > 0.5  # spread over [-1, 1]
    else:
        assert continuous is None
        assert z.shape[1] == start


def test_generator_input_is_deterministic_for_a_seeded_generator():
    model = make_gan(info_categorical=4, info_continuous=2)
    first = model.generator_input(16, None, torch.Generator().manual_seed(7))
    again = model.generator_input(16, None, torch.Generator().manual_seed(7))
    other = model.generator_input(16, None, torch.Generator().manual_seed(8))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[2], other[2])


# --- conditional sampling ----------------------------------------------------------------

@pytest.fixture(scope="module")
def conditional_gan(digits_batch) -> DCGAN:
    model = make_gan(conditional=True)
    labels = labels_of(16)
    for _ in range(3):  # non-trivial BatchNorm statistics and weights
        model.train_step(digits_batch, labels)
    return model


def test_conditional_sample_is_reproducible_and_follows_the_labels(conditional_gan):
    labels = torch.tensor([0, 1, 2, 3])
    a = conditional_gan.sample(4, torch.Generator().manual_seed(2), labels=labels)
    b = conditional_gan.sample(4, torch.Generator().manual_seed(2), labels=labels)
    other = conditional_gan.sample(4, torch.Generator().manual_seed(2),
                                   labels=torch.tensor([4, 5, 6, 7]))
    assert a.shape == (4, *SHAPE)
    assert torch.equal(a, b)
    per_image = (a - other).abs().flatten(1).amax(1)
    assert (per_image > 1e-4).all()


def test_a_scalar_label_broadcasts(conditional_gan):
    scalar = conditional_gan.sample(5, torch.Generator().manual_seed(4), labels=torch.tensor(3))
    full = conditional_gan.sample(5, torch.Generator().manual_seed(4),
                                  labels=torch.full((5,), 3))
    assert scalar.shape == (5, *SHAPE)
    assert torch.equal(scalar, full)
    as_int = conditional_gan.sample(5, torch.Generator().manual_seed(4), labels=3)
    assert torch.equal(as_int, full)


@pytest.mark.parametrize("labels", [
    torch.tensor([0, 10]),
    torch.tensor([-1, 2]),
    torch.tensor([1, 2, 3]),
    torch.tensor([], dtype=torch.long),
])
def test_bad_labels_raise(conditional_gan, labels):
    with pytest.raises(DgmError):
        conditional_gan.sample(2, torch.Generator().manual_seed(0), labels=labels)


def test_labels_to_an_unconditional_model_raise():
    model = make_gan()
    with pytest.raises(DgmError, match="not conditional"):
        model.sample(2, torch.Generator().manual_seed(0), labels=torch.tensor([0, 1]))


def test_conditional_training_needs_labels(digits_batch):
    model = make_gan(conditional=True)
    before = snapshot(model)
    with pytest.raises(DgmError, match="labelled"):
        model.train_step(digits_batch, None)
    after = model.weights()
    assert all(torch.equal(before[n][k], after[n][k]) for n in before for k in before[n])


# --- EMA of G ----------------------------------------------------------------------------

def g_state(model: DCGAN) -> dict[str, torch.Tensor]:
    """G's float parameters and buffers, cloned (the EMA averages both)."""
    return {k: v.detach().clone() for k, v in unwrap(model.G).state_dict().items()
            if v.is_floating_point()}


def ema_state(model: DCGAN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.G_ema.module.state_dict().items()
            if v.is_floating_point()}


def test_ema_is_the_exponential_average_of_g(digits_batch):
    decay = 0.9
    model = make_gan(ema_decay=decay)
    assert set(ema_state(model)) == set(g_state(model)) != set()
    torch.manual_seed(0)
    model.train_step(digits_batch, None)
    expected = g_state(model)
    for k, v in ema_state(model).items():  # the first update copies G
        assert torch.equal(v, expected[k]), k
    for _ in range(5):
        model.train_step(digits_batch, None)
        current = g_state(model)
        expected = {k: decay * expected[k] + (1 - decay) * current[k] for k in expected}
    ema = ema_state(model)
    assert int(model.G_ema.n_averaged) == 6
    for k in expected:
        torch.testing.assert_close(ema[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
    # and it lags G: not equal to the latest weights
    weight = "project.0.weight"
    assert not torch.allclose(ema[weight], current[weight], atol=1e-6)


def sample_with(model: DCGAN, net: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    """What ``sample`` computes, with the network chosen by the caller."""
    with torch.no_grad(), eval_mode(net):
        z, _, _ = model.generator_input(n, None, torch.Generator().manual_seed(seed))
        return ((net(z) + 1) / 2).clamp(0, 1)


def test_sampling_uses_the_ema_generator(digits_batch):
    model = make_gan(ema_decay=0.9)
    torch.manual_seed(0)
    for _ in range(4):
        model.train_step(digits_batch, None)
    assert model.sampling_generator() is model.G_ema.module
    samples = model.sample(8, torch.Generator().manual_seed(3))
    torch.testing.assert_close(samples, sample_with(model, model.G_ema.module, 8, 3),
                               rtol=0, atol=1e-6)
    from_g = sample_with(model, unwrap(model.G), 8, 3)
    assert (samples - from_g).abs().max().item() > 1e-3


def test_ema_weights_round_trip(digits_batch):
    model = make_gan(ema_decay=0.9)
    torch.manual_seed(0)
    for _ in range(3):
        model.train_step(digits_batch, None)
    weights = model.weights()
    assert set(weights) == {"G", "D", "G_ema"}
    assert int(weights["G_ema"]["n_averaged"]) == 3
    fresh = make_gan(seed=123, ema_decay=0.9)
    g = torch.Generator().manual_seed(5)
    assert not torch.equal(fresh.sample(6, g), model.sample(6, torch.Generator().manual_seed(5)))
    fresh.load_weights(weights)
    assert torch.equal(fresh.sample(6, torch.Generator().manual_seed(5)),
                       model.sample(6, torch.Generator().manual_seed(5)))
    assert int(fresh.G_ema.n_averaged) == 3


def test_without_ema_decay_there_is_no_ema(digits_batch):
    model = make_gan()
    assert model.G_ema is None
    assert model.sampling_generator() is unwrap(model.G)
    model.train_step(digits_batch, None)
    assert set(model.weights()) == {"G", "D"}
    torch.testing.assert_close(model.sample(4, torch.Generator().manual_seed(1)),
                               sample_with(model, unwrap(model.G), 4, 1), rtol=0, atol=1e-6)


# --- InfoGAN learns its code -------------------------------------------------------------

def test_infogan_q_head_recovers_the_categorical_code(digits_dir):
    images = load_split_tensors(digits_dir, "train").tensors[0][:256]
    model = make_gan(seed=0, width=8, latent_dim=8, info_categorical=4, info_continuous=1)
    batches = torch.Generator().manual_seed(0)
    infos = []
    for _ in range(150):
        idx = torch.randint(images.shape[0], (32,), generator=batches)
        metrics = model.train_step(images[idx], None)
        infos.append(metrics["info_loss"])
    with torch.no_grad(), eval_mode(model):
        z, categories, _ = model.generator_input(512, None, torch.Generator().manual_seed(99))
        _, q = model.split_d(model.D(model.G(z)))
    accuracy = (q[:, :4].argmax(1) == categories).float().mean().item()
    # measured 0.83 (0.75 to 0.93 over seeds 0 to 5); chance is 0.25
    assert accuracy >= 0.6
    first, last = sum(infos[:10]) / 10, sum(infos[-10:]) / 10
    # measured 1.55 → 0.92; at the start Q knows nothing: CE ≈ log 4 = 1.39 plus the Gaussian
    assert first > 1.2
    assert last < first - 0.3


# --- every variant trains and validates --------------------------------------------------

VARIANTS = {
    "conditional": {"conditional": True},
    "infogan": {"info_categorical": 3, "info_continuous": 2},
    "conditional-hinge": {"conditional": True, "loss": "hinge"},
    "wgan-gp-info": {"loss": "wgan-gp", "info_categorical": 4, "n_critic": 2},
    "ema": {"ema_decay": 0.9},
    "dropout": {"dropout": 0.3},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_and_validates(name, digits_batch):
    model = make_gan(**VARIANTS[name])
    cfg = model.config
    labels = labels_of(16) if cfg.conditional else None
    torch.manual_seed(1)
    for _ in range(2):
        metrics = model.train_step(digits_batch, labels)
    expected = {"loss_d", "loss_g", "d_real", "d_fake"}
    if cfg.loss == "wgan-gp":
        expected.add("gradient_penalty")
    if cfg.q_dim:
        expected.add("info_loss")
        assert metrics["info_loss"] > 0
    assert set(metrics) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    if cfg.loss == "nonsaturating":
        assert 0 < metrics["d_real"] < 1 and 0 < metrics["d_fake"] < 1

    before = snapshot(model)
    with eval_mode(model):  # as the training loop's validate() runs it
        val = model.validation_step(digits_batch, labels)
    assert model.training
    assert set(val) == {"loss", "d_real"}
    assert all(math.isfinite(v) for v in val.values())
    after = model.weights()
    assert set(after) == set(before)
    for net in before:
        for key in before[net]:
            assert torch.equal(before[net][key], after[net][key]), (net, key)


def test_dropout_reaches_the_discriminator_only_in_training():
    model = make_gan(dropout=0.3)
    drops = [m for m in model.D.modules() if isinstance(m, torch.nn.Dropout)]
    assert [m.p for m in drops] == [0.3, 0.3]
    assert not any(isinstance(m, torch.nn.Dropout) for m in make_gan().D.modules())
    images = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), eval_mode(model):
        assert torch.equal(model.D(images), model.D(images))


# --- weight decay ------------------------------------------------------------------------

@pytest.mark.parametrize("decay", [0.0, 0.05])
def test_weight_decay_reaches_the_adamw_optimizers(decay):
    model = make_gan(weight_decay=decay)
    assert set(model.optimizers) == {"G", "D"}
    for opt in model.optimizers.values():
        assert isinstance(opt, torch.optim.AdamW)
        assert [g["weight_decay"] for g in opt.param_groups] == [decay] * len(opt.param_groups)


# --- PacGAN packing ------------------------------------------------------------------------
def test_packing_stacks_groups_of_samples_along_the_channels():
    model = DCGAN(GANConfig(width=4, latent_dim=4, pack=3), (1, 8, 8)).setup()
    assert model.D.body[0].in_channels == 3
    images = torch.arange(7 * 64, dtype=torch.float32).view(7, 1, 8, 8)
    packed = model.packed(images)
    assert packed.shape == (2, 3, 8, 8)  # the 7th image does not fill a group
    assert torch.equal(packed[1, 2], images[5, 0]) and torch.equal(packed[0, 1], images[1, 0])
    d_out, q = model.judge(images, None)
    assert d_out.shape == (2,) and q is None


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan-gp"])
def test_packed_gan_trains_and_validates(loss, digits_batch):
    torch.manual_seed(0)
    model = DCGAN(GANConfig(width=4, latent_dim=4, pack=2, loss=loss), (1, 8, 8)).setup()
    metrics = model.train_step(digits_batch[:15], None)
    assert all(math.isfinite(v) for v in metrics.values())
    assert ("gradient_penalty" in metrics) is (loss == "wgan-gp")
    assert math.isfinite(model.validation_step(digits_batch, None)["loss"])


@pytest.mark.parametrize("extra", [{"conditional": True}, {"info_categorical": 3}])
def test_packing_is_only_for_unconditional_gans(extra):
    with pytest.raises(ValidationError, match="PacGAN"):
        GANConfig(pack=2, **extra)


def test_end_epoch_recomputes_the_ema_batchnorm_statistics_for_the_ema_weights(digits_batch):
    torch.manual_seed(0)
    model = DCGAN(GANConfig(width=4, latent_dim=4, ema_decay=0.5), (1, 8, 8)).setup()
    for _ in range(3):
        model.train_step(digits_batch, None)
    model.end_epoch()
    ema = model.G_ema.module
    generator = torch.Generator().manual_seed(0)  # the refresh's own seeded latents
    inputs = torch.cat([model.generator_input(128, None, generator)[0] for _ in range(20)])
    with torch.no_grad():
        pre_bn = ema.project[0](inputs)
    torch.testing.assert_close(ema.project[1].running_mean, pre_bn.mean(0), rtol=1e-4,
                               atol=1e-5)
    # update_bn averages each batch's (unbiased) variance
    per_batch_var = pre_bn.view(20, 128, -1).var(1).mean(0)
    torch.testing.assert_close(ema.project[1].running_var, per_batch_var, rtol=1e-4, atol=1e-5)
    assert ema.project[1].momentum == 0.1  # restored after the pass
