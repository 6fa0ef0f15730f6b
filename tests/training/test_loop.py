"""The family-agnostic training loop: history, resuming, step caps, callbacks, divergence."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from dgm.data.loading import load_split_tensors
from dgm.errors import DgmError, TrainingDiverged
from dgm.models.registry import build_model
from dgm.models.vae import VAEConfig
from dgm.training.loop import check_finite, train_epochs

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class Counting:
    """A stand-in model: ``loss`` is the global step index; NaN from step ``nan_at`` on."""

    supports_autocast = False

    def __init__(self, nan_at: int | None = None):
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.nan_at = nan_at
        self.train_calls = 0

    def train(self, mode: bool = True):
        self.train_calls += 1
        return self

    def end_epoch(self):
        return {}

    def train_step(self, images, labels):
        index = len(self.calls)
        self.calls.append((images, labels))
        if self.nan_at is not None and index >= self.nan_at:
            return {"loss": float("nan"), "other": 1.0}
        return {"loss": float(index), "other": 2.0}


def batches(n: int, with_labels: bool = True):
    """``n`` (images, labels) batches, or bare image tensors."""
    out = []
    for i in range(n):
        images = torch.full((2, 1, 4, 4), float(i))
        out.append((images, torch.tensor([i, i])) if with_labels else images)
    return out


def run(model, loader, **kwargs):
    return train_epochs(model, loader, log=None, **kwargs)


# --- with a real (tiny) model --------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_small(digits_dir):
    data = load_split_tensors(digits_dir, "train")
    return TensorDataset(*(t[:32].clone() for t in data.tensors))


@pytest.fixture()
def digits_loader(digits_small):
    return DataLoader(digits_small, batch_size=8, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def tiny_vae():
    return build_model(VAEConfig(latent_dim=4, width=4, lr=5e-3), (1, 8, 8), seed=0).setup()


def test_vae_history_one_row_per_epoch(digits_loader):
    model = tiny_vae().eval()
    seen = []
    history = run(model, digits_loader, epochs=3,
                  on_epoch_end=lambda e, m, final: seen.append((e, dict(m), final)))
    assert model.training  # the loop puts the model in training mode
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["step"] for row in history] == [4.0, 8.0, 12.0]  # 32 images / batch 8
    for row in history:
        # The model's metrics plus bookkeeping columns (more bookkeeping may be added).
        assert {"epoch", "step", "loss", "recon", "kl", "epoch_seconds"} <= set(row)
        assert all(math.isfinite(v) for v in row.values())
        assert row["loss"] > 0 and row["epoch_seconds"] >= 0
    assert [(e, f) for e, _, f in seen] == [(1, False), (2, False), (3, True)]
    assert [m for _, m, _ in seen] == [{k: v for k, v in r.items() if k != "epoch"}
                                       for r in history]
    assert history[-1]["loss"] < history[0]["loss"]


def test_vae_resume_from_start_epoch(digits_loader):
    history = run(tiny_vae(), digits_loader, epochs=3, start_epoch=1, start_step=4)
    assert [row["epoch"] for row in history] == [2, 3]
    assert [row["step"] for row in history] == [8.0, 12.0]


# --- with a stand-in model -----------------------------------------------------------------
def test_epoch_means_are_exact():
    history = run(Counting(), batches(3), epochs=2)
    assert [row["loss"] for row in history] == [1.0, 4.0]  # mean(0,1,2), mean(3,4,5)
    assert [row["other"] for row in history] == [2.0, 2.0]


def test_batches_reach_train_step():
    model = Counting()
    run(model, batches(2), epochs=1)
    assert [int(labels[0]) for _, labels in model.calls] == [0, 1]
    assert model.calls[1][0][0, 0, 0, 0].item() == 1.0
    model = Counting()
    run(model, batches(2, with_labels=False), epochs=1)
    assert [labels for _, labels in model.calls] == [None, None]
    assert model.train_calls == 1


def test_start_epoch_beyond_epochs_trains_nothing():
    model = Counting()
    assert run(model, batches(2), epochs=3, start_epoch=3) == []
    assert model.calls == []


def test_max_steps_stops_inside_an_epoch():
    model = Counting()
    finals = []
    history = run(model, batches(4), epochs=5, max_steps=10,
                  on_epoch_end=lambda e, m, final: finals.append((e, final)))
    assert len(model.calls) == 10
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row["step"] for row in history] == [4.0, 8.0, 10.0]
    assert history[-1]["loss"] == 8.5  # the partial epoch averages its 2 steps: 8, 9
    assert finals == [(1, False), (2, False), (3, True)]


def test_max_steps_counts_from_start_step():
    model = Counting()
    history = run(model, batches(4), epochs=5, start_epoch=2, start_step=8, max_steps=10)
    assert len(model.calls) == 2
    assert [(row["epoch"], row["step"]) for row in history] == [(3, 10.0)]


def test_max_steps_already_reached():
    model = Counting()
    called = []
    history = run(model, batches(4), epochs=5, start_epoch=3, start_step=12, max_steps=12,
                  on_epoch_end=lambda *a: called.append(a))
    assert history == [] and called == [] and model.calls == []


def test_sampler_set_epoch_is_called_each_epoch():
    class RecordingSampler(Sampler):
        def __init__(self, n):
            self.n, self.epochs = n, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self):
            return self.n

    data = TensorDataset(torch.zeros(6, 1, 4, 4), torch.zeros(6, dtype=torch.long))
    sampler = RecordingSampler(6)
    run(Counting(), DataLoader(data, batch_size=3, sampler=sampler), epochs=4, start_epoch=1)
    assert sampler.epochs == [2, 3, 4]


def test_nan_raises_before_on_epoch_end():
    model = Counting(nan_at=5)  # epoch 1: steps 0-2, epoch 2: steps 3-5
    ended = []
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 2"):
        run(model, batches(3), epochs=3, on_epoch_end=lambda e, m, f: ended.append(e))
    assert ended == [1]
    assert len(model.calls) == 6  # stopped at the first non-finite step


def test_nan_from_a_real_model_subclass(digits_loader):
    class Exploding(type(tiny_vae())):
        def train_step(self, images, labels):
            metrics = super().train_step(images, labels)
            return {**metrics, "loss": float("inf")}

    model = Exploding(VAEConfig(latent_dim=4, width=4), (1, 8, 8)).setup()
    ended = []
    with pytest.raises(TrainingDiverged, match="loss became inf at epoch 1, step 0"):
        run(model, digits_loader, epochs=2, on_epoch_end=lambda *a: ended.append(a))
    assert ended == []


def test_empty_loader():
    with pytest.raises(ValueError, match="no batches"):
        run(Counting(), [], epochs=2)


def test_log_lines(capsys):
    lines = []
    train_epochs(Counting(), batches(2), epochs=2, log=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2 step 2 loss=0.5 other=2 (")
    assert lines[1].startswith("epoch 2/2 step 4 loss=2.5 ")
    run(Counting(), batches(2), epochs=1)  # log=None: silent
    assert capsys.readouterr().out == ""


# --- check_finite --------------------------------------------------------------------------
def test_check_finite_accepts_finite_values():
    check_finite({"a": 0.0, "b": -1e30, "c": 3.5}, epoch=1, step=0)
    check_finite({}, epoch=1, step=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_names_the_metric(bad):
    with pytest.raises(TrainingDiverged) as info:
        check_finite({"loss_g": 1.0, "loss_d": bad}, epoch=4, step=17)
    assert str(info.value) == f"loss_d became {bad} at epoch 4, step 17"
    assert isinstance(info.value, DgmError)


def test_check_finite_reports_the_first_bad_metric():
    with pytest.raises(TrainingDiverged, match="^b became nan"):
        check_finite({"a": 1.0, "b": float("nan"), "c": float("inf")}, epoch=1, step=1)
