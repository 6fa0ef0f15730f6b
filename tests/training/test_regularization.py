"""Regularisation of training: learning-rate schedules (and their resume), early stopping on a
validation metric, validation means, bf16 autocast, and the config keys that drive them."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dgm.config import Params, TrainConfig, load_params
from dgm.data.loading import load_split_tensors
from dgm.errors import DgmError
from dgm.models.base import GenerativeModel, ModelConfigBase, ScheduleConfig
from dgm.models.gan import GANConfig
from dgm.models.rbm import RBM, RBMConfig
from dgm.models.registry import build_model
from dgm.models.vae import VAEConfig
from dgm.training.loop import EarlyStopping, autocast_dtype, train_epochs, validate

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LR0 = 1e-2
EPOCHS = 6


def run(model, loader, **kwargs):
    return train_epochs(model, loader, log=None, **kwargs)


@pytest.fixture(scope="module")
def digits16(digits_dir) -> TensorDataset:
    """16 training digits with their labels."""
    data = load_split_tensors(digits_dir, "train")
    return TensorDataset(*(t[:16].clone() for t in data.tensors))


@pytest.fixture()
def one_batch(digits16):
    """One batch of 16 per epoch: one optimisation step per epoch."""
    return DataLoader(digits16, batch_size=16, shuffle=False)


def tiny_vae(schedule: ScheduleConfig | None = None, epochs: int = 1):
    config = VAEConfig(latent_dim=2, width=4, lr=LR0)
    return build_model(config, (1, 8, 8), seed=0).setup(schedule=schedule, epochs=epochs)


# --- learning-rate schedules ---------------------------------------------------------------
ETA_MIN = 0.1 * LR0
SCHEDULES = {
    "step": (ScheduleConfig(kind="step", step_epochs=2, gamma=0.5),
             lambda e: LR0 * 0.5 ** ((e - 1) // 2)),
    "exponential": (ScheduleConfig(kind="exponential", gamma=0.9),
                    lambda e: LR0 * 0.9 ** (e - 1)),
    "cosine": (ScheduleConfig(kind="cosine", min_lr_factor=0.1),
               lambda e: ETA_MIN + (LR0 - ETA_MIN)
               * (1 + math.cos(math.pi * (e - 1) / EPOCHS)) / 2),
}


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_lr_follows_the_closed_form(one_batch, kind):
    schedule, closed_form = SCHEDULES[kind]
    model = tiny_vae(schedule, EPOCHS)
    assert set(model.schedulers) == {"net"}
    history = run(model, one_batch, epochs=EPOCHS)
    expected = [closed_form(e) for e in range(1, EPOCHS + 1)]
    assert [row["lr_net"] for row in history] == pytest.approx(expected, rel=1e-9, abs=0)
    assert len(set(expected)) > 1  # the closed form really decays: constant lr would fail
    # After the run the optimizer holds the lr of the next epoch (cosine: its floor).
    lr_after = model.optimizers["net"].param_groups[0]["lr"]
    assert lr_after == pytest.approx(closed_form(EPOCHS + 1), rel=1e-9)
    if kind == "cosine":
        assert lr_after == pytest.approx(ETA_MIN, rel=1e-9)


@pytest.mark.parametrize("schedule", [None, ScheduleConfig(kind="none")], ids=["absent", "none"])
def test_no_schedule_keeps_lr_constant(one_batch, schedule):
    model = tiny_vae(schedule, EPOCHS)
    assert model.schedulers == {}
    history = run(model, one_batch, epochs=3)
    assert [row["lr_net"] for row in history] == [LR0, LR0, LR0]
    assert model.training_state()["schedulers"] == {}


def test_gan_has_one_scheduler_per_optimizer(digits16):
    config = GANConfig(latent_dim=4, width=4, lr_g=2e-3, lr_d=1e-3)
    model = build_model(config, (1, 8, 8), seed=0)
    model.setup(schedule=ScheduleConfig(kind="exponential", gamma=0.5), epochs=3)
    assert set(model.schedulers) == {"G", "D"}
    assert model.schedulers["G"].optimizer is model.optimizers["G"]
    assert model.schedulers["D"].optimizer is model.optimizers["D"]
    history = run(model, DataLoader(digits16, batch_size=8), epochs=3)
    assert [row["lr_G"] for row in history] == pytest.approx([2e-3, 1e-3, 5e-4], rel=1e-12)
    assert [row["lr_D"] for row in history] == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-12)


@pytest.mark.parametrize("kind", ["step", "cosine"])
def test_resume_continues_the_lr_sequence(one_batch, kind):
    schedule, closed_form = SCHEDULES[kind]
    whole = run(tiny_vae(schedule, EPOCHS), one_batch, epochs=EPOCHS)

    first = tiny_vae(schedule, EPOCHS)
    run(first, one_batch, epochs=3)
    state = first.training_state()
    assert state["schedulers"]["net"]["last_epoch"] == 3

    resumed = tiny_vae(schedule, EPOCHS)  # fresh: its scheduler starts at epoch 0
    assert resumed.optimizers["net"].param_groups[0]["lr"] == LR0
    resumed.load_training_state(state)
    rest = run(resumed, one_batch, epochs=EPOCHS, start_epoch=3)
    assert [row["epoch"] for row in rest] == [4, 5, 6]
    assert [row["lr_net"] for row in rest] == [row["lr_net"] for row in whole[3:]]
    assert rest[0]["lr_net"] == pytest.approx(closed_form(4), rel=1e-9)
    assert rest[0]["lr_net"] != LR0  # a restarted schedule would be back at lr0


def test_resume_from_a_state_without_schedulers(one_batch):
    """Checkpoints written before schedules existed still load; the schedule starts afresh."""
    schedule = SCHEDULES["exponential"][0]
    first = tiny_vae(schedule, EPOCHS)
    run(first, one_batch, epochs=2)
    state = first.training_state()
    del state["schedulers"]
    resumed = tiny_vae(schedule, EPOCHS)
    resumed.load_training_state(state)
    rest = run(resumed, one_batch, epochs=4, start_epoch=2)
    # The optimizer's lr (epoch 3's) is restored; the scheduler decays it from there.
    assert [row["lr_net"] for row in rest] == pytest.approx([LR0 * 0.81, LR0 * 0.729], rel=1e-9)


# --- early stopping ------------------------------------------------------------------------
class Scripted(GenerativeModel):
    """A stand-in with the real weights()/load_weights()/optimize(): each training step adds
    1 to its single weight (so the weight counts the epochs trained, one batch per epoch) and
    validation reports the next value of a script (``key``, default ``loss``)."""

    family = "scripted"
    config_class = ModelConfigBase
    networks = ("net",)
    supports_autocast = False

    def __init__(self, script, key: str = "loss", train_script=None):
        super().__init__(ModelConfigBase(), (1, 2, 2))
        self.net = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.net.weight)
        self.script, self.key = list(script), key
        self.train_script = list(train_script or [])
        self.validations = 0
        self.steps = 0
        self.setup()

    def make_optimizers(self):
        return {"net": torch.optim.SGD(self.net.parameters(), lr=1.0)}

    def train_step(self, images, labels):
        self.optimize("net", -self.net.weight.sum())  # gradient −1, lr 1: weight += 1
        metrics = {"train_value": self.train_script[self.steps]} if self.train_script else {}
        self.steps += 1
        return {**metrics, "step_loss": float(self.steps)}

    def validation_step(self, images, labels):
        value = self.script[self.validations]
        self.validations += 1
        return {self.key: value}

    @property
    def weight(self) -> float:
        return self.net.weight.item()


def data(batches: int = 1):
    return [(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long))] * batches


def stop(patience, **kwargs) -> EarlyStopping:
    return EarlyStopping(patience=patience, **kwargs)


def run_scripted(model, *, epochs=10, validation=True, **kwargs):
    calls = []

    def on_epoch_end(epoch, metrics, final):
        calls.append((epoch, final, model.weight, dict(metrics)))

    history = run(model, data(), epochs=epochs, on_epoch_end=on_epoch_end,
                  val_loader=data() if validation else None, **kwargs)
    return history, calls


def test_stops_after_patience_epochs_without_improvement():
    model = Scripted([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 0.5, 0.1])
    history, calls = run_scripted(model, early_stopping=stop(3))
    # best at epoch 3; epochs 4, 5, 6 do not improve on it: stop after epoch 6
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert [row["val_loss"] for row in history] == [3.0, 2.0, 1.0, 1.5, 1.2, 1.1]
    assert [(e, final) for e, final, _, _ in calls] == [(e, e == 6) for e in range(1, 7)]
    assert model.steps == 6 and model.validations == 6


def test_final_callback_sees_the_best_epochs_weights():
    model = Scripted([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 0.5])
    _, calls = run_scripted(model, early_stopping=stop(3))
    assert [w for _, _, w, _ in calls[:-1]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    epoch, final, weight, metrics = calls[-1]
    assert (epoch, final) == (6, True)
    assert weight == 3.0  # the weights after epoch 3 (the best), not epoch 6's
    assert metrics["val_loss"] == 1.1  # the metrics stay those of the last epoch
    assert model.weight == 3.0


def test_weights_are_a_snapshot_not_a_view():
    """Early stopping keeps ``model.weights()`` of the best epoch while training goes on."""
    model = Scripted([1.0])
    snapshot = model.weights()
    model.train_step(torch.zeros(2, 1, 2, 2), None)
    assert model.weight == 1.0
    assert snapshot["net"]["weight"].item() == 0.0


@pytest.mark.parametrize(
    ("min_delta", "script", "stopped_at"),
    [
        (0.0, [1.0, 0.95, 0.9, 0.85, 0.8, 0.75], 6),  # every epoch improves: runs to the end
        (0.1, [1.0, 0.95, 0.9, 0.85, 0.8, 0.75], 3),  # 0.9 is not below 1.0 − 0.1
        (0.1, [1.0, 0.95, 0.85, 0.84, 0.83, 0.5], 5),  # 0.85 resets the count at epoch 3
    ],
)
def test_min_delta(min_delta, script, stopped_at):
    model = Scripted(script)
    history, calls = run_scripted(model, epochs=6,
                                  early_stopping=stop(2, min_delta=min_delta))
    assert history[-1]["epoch"] == stopped_at
    assert calls[-1][:2] == (stopped_at, True)


def test_mode_max_on_another_metric():
    model = Scripted([0.1, 0.5, 0.4, 0.45, 0.3, 0.9], key="score")
    history, calls = run_scripted(
        model, early_stopping=stop(2, metric="val_score", mode="max"))
    assert [row["val_score"] for row in history] == [0.1, 0.5, 0.4, 0.45]
    assert calls[-1][:2] == (4, True)
    # the same scores minimised: epoch 1 stays best, stop at epoch 3
    model = Scripted([0.1, 0.5, 0.4, 0.45], key="score")
    history, _ = run_scripted(model, early_stopping=stop(2, metric="val_score"))
    assert history[-1]["epoch"] == 3


def test_stopping_on_a_training_metric_needs_no_validation_data():
    model = Scripted([], train_script=[5.0, 4.0, 4.5, 4.2, 1.0])
    history, calls = run_scripted(model, validation=False,
                                  early_stopping=stop(2, metric="train_value"))
    assert [row["train_value"] for row in history] == [5.0, 4.0, 4.5, 4.2]
    assert "val_loss" not in history[0]
    assert calls[-1][:2] == (4, True)


@pytest.mark.parametrize("early_stopping", [None, EarlyStopping(), stop(None, metric="val_x")])
def test_no_patience_never_stops(early_stopping):
    model = Scripted([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # only ever worse
    history, calls = run_scripted(model, epochs=6, early_stopping=early_stopping)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert [final for _, final, _, _ in calls] == [False] * 5 + [True]
    assert model.weight == 6.0  # nothing restored


def test_no_patience_needs_no_validation_data():
    model = Scripted([])
    history, _ = run_scripted(model, epochs=2, validation=False, early_stopping=EarlyStopping())
    assert len(history) == 2


def test_an_unreported_metric_is_an_error_naming_it():
    model = Scripted([1.0, 0.5])
    with pytest.raises(ValueError, match=r"metric 'val_accuracy' is not reported") as info:
        run_scripted(model, early_stopping=stop(2, metric="val_accuracy"))
    assert "val_loss" in str(info.value)  # lists what is reported
    assert model.steps == 1  # raised after the first epoch


def test_validation_metric_without_validation_data_is_an_error():
    model = Scripted([1.0])
    with pytest.raises(ValueError, match="early stopping on val_loss needs validation data"):
        run_scripted(model, validation=False, early_stopping=stop(2))
    assert model.steps == 0  # raised before training


def test_previous_rows_carry_the_best_value_across_a_resume():
    previous = [{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 0.5},
                {"epoch": 3, "val_loss": 0.6}]
    script = [0.7, 0.55, 0.4, 0.3, 0.2]
    model = Scripted(script)
    history, calls = run_scripted(model, start_epoch=3, early_stopping=stop(2),
                                  previous=previous)
    # best 0.5 at epoch 2: epochs 3 and 4 without improvement, stop after epoch 4
    assert [row["epoch"] for row in history] == [4]
    assert calls[-1][:2] == (4, True)
    # without the earlier rows epochs 4-7 each improve and training runs on
    model = Scripted(script)
    history, _ = run_scripted(model, start_epoch=3, epochs=7, early_stopping=stop(2))
    assert [row["epoch"] for row in history] == [4, 5, 6, 7]
    # an improvement on the carried best resets the count
    model = Scripted([0.45, 0.46, 0.47, 0.1])
    history, _ = run_scripted(model, start_epoch=3, early_stopping=stop(2), previous=previous)
    assert [row["epoch"] for row in history] == [4, 5, 6]


def test_previous_rows_in_mode_max_and_without_the_metric():
    previous = [{"epoch": 1, "val_score": 0.9}, {"epoch": 2, "loss": 3.0}]
    model = Scripted([0.8, 0.95], key="score")
    history, _ = run_scripted(model, start_epoch=2,
                              early_stopping=stop(2, metric="val_score", mode="max"),
                              previous=previous)
    assert [row["epoch"] for row in history] == [3]  # 0.8 < 0.9 (epoch 1): 3 − 1 ≥ 2


# --- validate ------------------------------------------------------------------------------
class Recording(nn.Module):
    """validation_step: the batch's mean pixel (``mean``), its size and its labels' sum."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen = []

    def validation_step(self, images, labels):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return {"mean": images.mean().item(), "size": float(len(images)),
                "label_sum": float(labels.sum())}


def uneven_batches():
    return [(torch.full((n, 1, 2, 2), value), torch.full((n,), label))
            for n, value, label in [(1, 1.0, 0), (3, 2.0, 1), (4, 10.0, 5)]]


@pytest.mark.parametrize("training", [True, False])
def test_validate_weights_batches_by_size_and_restores_the_mode(training):
    model = Recording().train(training)
    metrics = validate(model, uneven_batches())
    assert metrics == pytest.approx({
        "val_mean": (1 * 1.0 + 3 * 2.0 + 4 * 10.0) / 8,  # 5.875; the plain mean is 4.33
        "val_size": (1 * 1 + 3 * 3 + 4 * 4) / 8,
        "val_label_sum": (1 * 0 + 3 * 3 + 4 * 20) / 8,
    }, rel=1e-12)
    assert model.seen == [(False, False)] * 3  # eval mode, no autograd
    assert model.training is training and model.layer.training is training


def test_validate_of_an_empty_loader():
    assert validate(Recording(), []) == {}


def test_validation_metrics_join_each_history_row():
    model = Scripted([2.0, 1.0])
    history, calls = run_scripted(model, epochs=2)
    assert [row["val_loss"] for row in history] == [2.0, 1.0]
    assert [m["val_loss"] for _, _, _, m in calls] == [2.0, 1.0]
    assert model.training  # validation left the model training


# --- precision -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [
        ("auto", torch.device("cpu"), None),
        ("auto", torch.device("cuda"), torch.bfloat16),
        ("auto", torch.device("cuda", 0), torch.bfloat16),
        ("bf16", torch.device("cpu"), torch.bfloat16),
        ("bf16", torch.device("cuda"), torch.bfloat16),
        ("fp32", torch.device("cpu"), None),
        ("fp32", torch.device("cuda"), None),
    ],
)
def test_autocast_dtype(precision, device, expected):
    assert autocast_dtype(precision, device) is expected


def record_output_dtypes(module: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    module.register_forward_hook(lambda _m, _in, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize(("precision", "expected"), [
    ("bf16", torch.bfloat16), ("fp32", torch.float32), ("auto", torch.float32)])
def test_gan_trains_under_autocast(digits16, precision, expected):
    model = build_model(GANConfig(latent_dim=4, width=4), (1, 8, 8), seed=0).setup()
    g_conv = record_output_dtypes(model.G.upsample[0])
    d_conv = record_output_dtypes(model.D.body[0])
    history = run(model, DataLoader(digits16, batch_size=8), epochs=1, precision=precision)
    assert len(g_conv) == 2 and set(g_conv) == {expected}  # one G forward per step
    assert len(d_conv) == 6 and set(d_conv) == {expected}  # real, fake, fake for G
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float32}
    metrics = [v for k, v in history[0].items() if k.startswith(("loss_", "d_"))]
    assert len(metrics) == 4 and all(math.isfinite(v) for v in metrics)
    assert not torch.is_autocast_enabled("cpu")  # the region ended with the step


def test_rbm_never_autocasts(digits16):
    """The RBM's CD step stays in fp32 under ``bf16``; a family that allows autocast gets it."""
    autocast_seen = []

    class Watched(RBM):
        def train_step(self, images, labels):
            autocast_seen.append((type(self).supports_autocast, torch.is_autocast_enabled("cpu"),
                                  torch.get_autocast_dtype("cpu")))
            return super().train_step(images, labels)

    class AutocastRBM(Watched):
        supports_autocast = True

    loader = DataLoader(digits16, batch_size=8)
    for cls in (Watched, AutocastRBM):
        torch.manual_seed(0)
        model = cls(RBMConfig(hidden=8), (1, 8, 8)).setup()
        history = run(model, loader, epochs=1, precision="bf16")
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert math.isfinite(history[0]["cd_loss"])
    assert autocast_seen == [(False, False, torch.bfloat16)] * 2 + [(True, True,
                                                                     torch.bfloat16)] * 2


# --- config --------------------------------------------------------------------------------
def test_train_config_parses_the_regularisation_keys():
    params = Params.model_validate({"train": {
        "lr_schedule": {"kind": "cosine", "min_lr_factor": 0.05},
        "early_stopping": {"patience": 4, "min_delta": 0.01, "mode": "max", "metric": "val_x"},
        "precision": "bf16"}})
    train = params.train
    assert train.lr_schedule == ScheduleConfig(kind="cosine", min_lr_factor=0.05)
    assert train.early_stopping == EarlyStopping(patience=4, min_delta=0.01, mode="max",
                                                 metric="val_x")
    assert train.precision == "bf16"
    defaults = TrainConfig()
    assert defaults.lr_schedule.kind == "none" and defaults.early_stopping.patience is None
    assert defaults.precision == "auto"


BAD_TRAIN = [
    ("lr_schedule:\n    kind: linear", "train.lr_schedule.kind"),
    ("lr_schedule:\n    gamma: 1.5", "train.lr_schedule.gamma"),
    ("lr_schedule:\n    step_epochs: 0", "train.lr_schedule.step_epochs"),
    ("lr_schedule:\n    warmup: 3", "train.lr_schedule.warmup"),
    ("early_stopping:\n    patience: 0", "train.early_stopping.patience"),
    ("early_stopping:\n    min_delta: -0.1", "train.early_stopping.min_delta"),
    ("early_stopping:\n    mode: avg", "train.early_stopping.mode"),
    ("precision: fp16", "train.precision"),
]


@pytest.mark.parametrize(("text", "key"), BAD_TRAIN, ids=[k for _, k in BAD_TRAIN])
def test_bad_regularisation_keys_name_the_key(tmp_path, text, key):
    text = f"train:\n  {text}\n"
    with pytest.raises(ValidationError):
        Params.model_validate(yaml.safe_load(text))
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(DgmError) as info:
        load_params(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: ")
    assert ";" not in message  # exactly one problem reported


@pytest.mark.parametrize(("text", "message"), [
    ("precision: fp16", "train.precision: Input should be 'auto', 'bf16' or 'fp32'"),
    ("early_stopping:\n    patience: 0",
     "train.early_stopping.patience: Input should be greater than 0"),
    ("lr_schedule:\n    kind: linear", "train.lr_schedule.kind: Input should be 'none', "
     "'step', 'exponential' or 'cosine'"),
    ("lr_schedule:\n    warmup: 3", "train.lr_schedule.warmup: unknown key"),
])
def test_bad_value_messages(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  {text}\n")
    with pytest.raises(DgmError) as info:
        load_params(path)
    assert str(info.value) == f"{path}: {message}"
