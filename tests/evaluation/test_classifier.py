"""The evaluator CNN: features, probabilities, persistence and a quick fit on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgm.data.loading import load_split_tensors
from dgm.errors import DgmError
from dgm.evaluation.classifier import (
    FEATURE_DIM,
    FORMAT,
    Classifier,
    FeatureAutoencoder,
    StackedClassifier,
    accuracy,
    extract,
    load_classifier,
    reconstruction_error,
    save_classifier,
    split_stacked,
    train_autoencoder,
    train_classifier,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def classifier(shape=(1, 8, 8), k=10, seed=0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(shape, k).eval()


def images(n, shape, seed=0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
def test_extract_shapes_and_probabilities(shape):
    model = classifier(shape, k=7)
    feats, probs = extract(model, images(13, shape))
    assert FEATURE_DIM == 128
    assert feats.shape == (13, 128) and probs.shape == (13, 7)
    assert feats.dtype == np.float64 and probs.dtype == np.float64
    assert feats.min() < 0 < feats.max()  # pre-activation features: no rectified dims
    logits = model.head(torch.relu(torch.from_numpy(feats).float()))
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).detach().double().numpy(), atol=1e-6)
    assert np.all(probs > 0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_extract_empty_input():
    feats, probs = extract(classifier(), torch.empty(0, 1, 8, 8))
    assert feats.shape == (0, 128) and probs.shape == (0, 10)


def test_extract_independent_of_batch_size():
    model = classifier()
    x = images(300, (1, 8, 8))
    f7, p7 = extract(model, x, batch_size=7)
    f1000, p1000 = extract(model, x, batch_size=1000)
    np.testing.assert_allclose(f7, f1000, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p7, p1000, rtol=1e-5, atol=1e-6)


def test_extract_is_deterministic_in_training_mode_too():
    """extract switches off dropout: repeated calls agree even on a model left in train()."""
    model = classifier().train()
    x = images(20, (1, 8, 8))
    a, b = extract(model, x), extract(model, x)
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("shape", [(1, 10, 10), (3, 8, 6)])
def test_size_not_divisible_by_4(shape):
    with pytest.raises(DgmError, match="divisible by 4"):
        Classifier(shape, 10)


def test_save_load_round_trip(tmp_path):
    model = classifier((3, 12, 8), k=4, seed=1)
    path = save_classifier(model, tmp_path / "ev" / "classifier.pt", version="abc")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["classifier.pt"]
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["version"] == "abc"
    loaded = load_classifier(path)
    assert not loaded.training
    assert loaded.image_shape == (3, 12, 8) and loaded.num_classes == 4
    x = images(9, (3, 12, 8))
    for a, b in zip(extract(model, x), extract(loaded, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_autoencoder_round_trip_features_without_probabilities(tmp_path):
    torch.manual_seed(0)
    model = FeatureAutoencoder((3, 16, 12)).eval()
    x = images(5, (3, 16, 12))
    assert model(x).shape == x.shape and 0 <= model(x).min() and model(x).max() <= 1
    path = save_classifier(model, tmp_path / "classifier.pt", version="folder-1")
    assert torch.load(path, weights_only=True)["kind"] == "autoencoder"
    loaded = load_classifier(path)
    assert isinstance(loaded, FeatureAutoencoder) and loaded.version == "folder-1"
    features, probs = extract(loaded, x)
    assert probs is None and features.shape == (5, FEATURE_DIM)
    np.testing.assert_array_equal(features, extract(model, x)[0])
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "kind": "gan"}, path)
    with pytest.raises(DgmError, match="is not a dgm evaluator"):
        load_classifier(path)


def test_autoencoder_training_lowers_the_reconstruction_error(digits_splits):
    train, val = digits_splits["train"], digits_splits["val"]
    budget = {"epochs": 12, "batch_size": 64, "lr": 1e-2, "weight_decay": 0.0, "patience": 12,
              "seed": 0, "log": None}
    model, report = train_autoencoder(train, val, (1, 8, 8), **budget)
    error = reconstruction_error(model, val)
    assert error == pytest.approx(-report.val_accuracy)
    # the code carries the image: well below predicting the mean digit for every image
    mean_image = ((val.tensors[0] - train.tensors[0].mean(0)) ** 2).mean().item()
    assert error < 0.4 * mean_image
    again, _ = train_autoencoder(train, val, (1, 8, 8), **budget)
    np.testing.assert_array_equal(extract(model, val.tensors[0])[0],
                                  extract(again, val.tensors[0])[0])


def test_load_missing_file(tmp_path):
    with pytest.raises(DgmError, match="evaluator not found"):
        load_classifier(tmp_path / "classifier.pt")


def test_load_non_dgm_torch_file(tmp_path):
    path = tmp_path / "classifier.pt"
    torch.save({"format": "dgm-generator/1"}, path)
    with pytest.raises(DgmError, match="is not a dgm evaluator"):
        load_classifier(path)


def test_load_non_torch_file(tmp_path):
    path = tmp_path / "classifier.pt"
    path.write_text("hello")
    with pytest.raises(DgmError):
        load_classifier(path)


def test_accuracy_counts_argmax_hits():
    model = classifier(k=3)
    x = images(50, (1, 8, 8))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    labels = predicted.clone()
    labels[:10] = (labels[:10] + 1) % 3  # 10 wrong of 50
    data = torch.utils.data.TensorDataset(x, labels)
    assert accuracy(model, data, batch_size=7) == pytest.approx(0.8)


@pytest.fixture(scope="module")
def digits_splits(digits_dir):
    return {s: load_split_tensors(digits_dir, s) for s in ("train", "val", "test")}


def test_train_classifier_on_digits(digits_splits):
    model, report = train_classifier(
        digits_splits["train"], digits_splits["val"], (1, 8, 8), 10, epochs=8, batch_size=64,
        lr=3e-3, weight_decay=1e-4, patience=10, seed=0, log=None,
    )
    assert not model.training
    assert report.epochs_run == 8
    assert 1 <= report.best_epoch <= 8
    assert report.val_accuracy >= 0.9
    # The returned model is the best epoch's: its val accuracy is the reported one.
    assert accuracy(model, digits_splits["val"]) == pytest.approx(report.val_accuracy)
    assert accuracy(model, digits_splits["test"]) >= 0.9


def test_train_classifier_respects_max_steps(digits_splits):
    # 1294 train images / 64 = 21 batches per epoch: 25 steps end inside epoch 2.
    lines = []
    _, report = train_classifier(
        digits_splits["train"], digits_splits["val"], (1, 8, 8), 10, epochs=8, batch_size=64,
        lr=3e-3, weight_decay=1e-4, patience=10, seed=0, max_steps=25, log=lines.append,
    )
    assert report.epochs_run == 2
    assert len(lines) == 2 and "step 25" in lines[-1]


def test_train_classifier_is_deterministic(digits_splits):
    small = torch.utils.data.TensorDataset(*(t[:256] for t in digits_splits["train"].tensors))
    kwargs = dict(epochs=2, batch_size=64, lr=3e-3, weight_decay=1e-4, patience=5, seed=3,
                  log=None)
    a, ra = train_classifier(small, digits_splits["val"], (1, 8, 8), 10, **kwargs)
    b, rb = train_classifier(small, digits_splits["val"], (1, 8, 8), 10, **kwargs)
    assert ra == rb
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


# --- stacked evaluators --------------------------------------------------------------------
def stacked_model(k=10, seed=0):
    return StackedClassifier(classifier((1, 8, 8), k=k, seed=seed), 3).eval()


def test_stacked_probs_are_the_product_over_modes():
    model = stacked_model()
    assert model.image_shape == (3, 8, 8) and model.num_classes == 1000
    x = images(17, (3, 8, 8), seed=4)
    feats, probs = extract(model, x, batch_size=5)
    assert probs.shape == (17, 1000) and feats.shape == (17, 3 * FEATURE_DIM)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    per_channel = [extract(model.base, x[:, c : c + 1]) for c in range(3)]
    a, b, c = (p.argmax(1) for _, p in per_channel)
    np.testing.assert_array_equal(probs.argmax(1), 100 * a + 10 * b + c)
    # Mode m = 100a + 10b + c has probability p0[a] * p1[b] * p2[c].
    p0, p1, p2 = (p for _, p in per_channel)
    expected = np.einsum("na,nb,nc->nabc", p0, p1, p2).reshape(17, 1000)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-9)
    # Features: the three channels' features side by side, channel 0 first.
    for ch, (f, _) in enumerate(per_channel):
        np.testing.assert_allclose(feats[:, ch * FEATURE_DIM : (ch + 1) * FEATURE_DIM], f,
                                   rtol=1e-5, atol=1e-6)


def test_stacked_forward_is_log_probs_and_accuracy_uses_modes():
    model = stacked_model(k=4)
    x = images(30, (3, 8, 8), seed=5)
    _, probs = extract(model, x)
    with torch.no_grad():
        log_probs = model(x)
    assert log_probs.shape == (30, 64)
    np.testing.assert_allclose(log_probs.exp().double().numpy(), probs, rtol=1e-4, atol=1e-7)
    labels = torch.from_numpy(probs.argmax(1))
    assert accuracy(model, torch.utils.data.TensorDataset(x, labels)) == 1.0


def test_stacked_extract_empty_input():
    feats, probs = extract(stacked_model(), torch.empty(0, 3, 8, 8))
    assert feats.shape == (0, 3 * FEATURE_DIM) and probs.shape == (0, 1000)


def test_stacked_needs_one_channel_base():
    with pytest.raises(DgmError, match="one-channel base"):
        StackedClassifier(classifier((3, 8, 8)), 3)


@pytest.mark.parametrize(("k", "channels"), [(10, 3), (4, 2), (7, 1)])
def test_split_stacked_inverts_the_mode_encoding(k, channels):
    gen = torch.Generator().manual_seed(k)
    digits = torch.randint(0, k, (11, channels), generator=gen)
    modes = sum(digits[:, c] * k ** (channels - 1 - c) for c in range(channels))
    x = torch.rand(11, channels, 8, 8, generator=gen)
    channel_images, channel_labels = split_stacked(x, modes, k)
    assert channel_images.shape == (11 * channels, 1, 8, 8)
    assert torch.equal(channel_labels, digits.reshape(-1))
    # Row n*C + c is channel c of image n.
    for n in (0, 5, 10):
        for c in range(channels):
            assert torch.equal(channel_images[n * channels + c, 0], x[n, c])


def test_stacked_save_load_round_trip(tmp_path):
    model = stacked_model(seed=2)
    path = save_classifier(model, tmp_path / "classifier.pt", version="stacked-v1")
    payload = torch.load(path, weights_only=True)
    assert payload["stacked_channels"] == 3 and payload["image_shape"] == [1, 8, 8]
    assert payload["num_classes"] == 10 and payload["version"] == "stacked-v1"
    loaded = load_classifier(path)
    assert isinstance(loaded, StackedClassifier)
    assert loaded.version == "stacked-v1" and not loaded.training
    assert loaded.channels == 3 and loaded.num_classes == 1000
    assert loaded.image_shape == (3, 8, 8)
    x = images(6, (3, 8, 8), seed=6)
    for a, b in zip(extract(model, x), extract(loaded, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_plain_save_load_keeps_version_and_is_not_stacked(tmp_path):
    path = save_classifier(classifier(), tmp_path / "classifier.pt", version="plain-v2")
    assert torch.load(path, weights_only=True)["stacked_channels"] == 0
    loaded = load_classifier(path)
    assert not isinstance(loaded, StackedClassifier) and loaded.version == "plain-v2"
