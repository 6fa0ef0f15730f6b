"""The real side of every metric, computed once per evaluator: ``reference.npz``.

It holds the train split's evaluator features (divided by the evaluator's feature scale:
the root mean per-dimension variance of the train features, so distances are in units of
the real data's spread and do not depend on how the classifier happened to scale its
activations) and class histogram, a seeded subsample of its
pixels (pixel-space SWD), the held-out (test) → train nearest-neighbour distances
(memorization) and the dataset's metadata, so scoring needs only the evaluator directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dgm.data.loading import to_float_tensor
from dgm.data.parquet import DatasetMeta, ImageSet, read_split
from dgm.errors import DgmError
from dgm.evaluation.classifier import extract
from dgm.evaluation.metrics import FeatureSet, Reference, nearest_distances
from dgm.paths import atomic_path

REFERENCE_FILE = "reference.npz"
PIXEL_SAMPLES = 10_000
CHUNK = 5000


def features_and_labels(classifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evaluator features (float32) and argmax classes of uint8 (N, H, W, C) images, chunked
    so that stacked datasets' K^C posteriors never exist for the whole set at once (no
    classes: an empty label array)."""
    feats, labels = [], []
    for start in range(0, len(images), CHUNK):
        f, p = extract(classifier, to_float_tensor(images[start : start + CHUNK]))
        feats.append(f.astype(np.float32))
        labels.append(np.empty(0, np.int64) if p is None else p.argmax(1))
    if not feats:
        return np.empty((0, 0), np.float32), np.empty(0, np.int64)
    return np.concatenate(feats), np.concatenate(labels)


def flat_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) → float32 (N, H·W·C) in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def feature_set(classifier, images: np.ndarray, scale: float) -> FeatureSet:
    """What the metrics see of uint8 (N, H, W, C) images: features divided by the
    evaluator's ``scale``, class posteriors and the first :data:`PIXEL_SAMPLES` pixels."""
    features, probs = extract(classifier, to_float_tensor(images))
    features /= scale
    return FeatureSet(features, probs, pixels=flat_pixels(images[:PIXEL_SAMPLES]))


def build_reference(classifier, data_dir: str | Path, seed: int = 0) -> tuple[Reference, dict]:
    """Reference of the prepared dataset at ``data_dir`` under ``classifier``."""
    reference, info, _ = reference_and_holdout(
        classifier, read_split(data_dir, "train"), read_split(data_dir, "test"), seed)
    return reference, info


def reference_and_holdout(classifier, train: ImageSet, test: ImageSet, seed: int = 0,
                          ) -> tuple[Reference, dict, FeatureSet]:
    """Reference of the ``train`` split, its info, and the ``test`` split as the metrics see
    any scored images (:func:`feature_set`) — what the floors of the metrics are scored on."""
    features, labels = features_and_labels(classifier, train.images)
    scale = float(np.sqrt(features.astype(np.float64).var(axis=0).mean())) or 1.0
    features /= scale
    holdout = feature_set(classifier, test.images, scale)
    counts = np.bincount(labels, minlength=classifier.num_classes)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(train.images), min(PIXEL_SAMPLES, len(train.images)),
                              replace=False))
    reference = Reference(
        features=features,
        histogram=counts / max(1, counts.sum()),
        pixels=flat_pixels(train.images[take]),
        holdout_nn_distances=nearest_distances(holdout.features, features),
    )
    info = {"dataset": _meta_dict(train.meta), "evaluator_version": classifier.version,
            "feature_scale": scale,
            "train_rows": len(train.images), "test_rows": len(test.images)}
    return reference, info, holdout


def _meta_dict(meta: DatasetMeta) -> dict:
    return {"name": meta.name, "height": meta.height, "width": meta.width,
            "channels": meta.channels, "class_names": list(meta.class_names),
            "checksums": dict(meta.checksums),
            "channel_class_names": list(meta.channel_class_names)}


def meta_from_info(info: dict) -> DatasetMeta:
    d = info["dataset"]
    return DatasetMeta(d["name"], d["height"], d["width"], d["channels"],
                       tuple(d["class_names"]), dict(d["checksums"]),
                       tuple(d.get("channel_class_names", ())))


def save_reference(reference: Reference, info: dict, path: str | Path) -> Path:
    """Write ``reference.npz`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, features=reference.features, histogram=reference.histogram,
                     pixels=(reference.pixels * 255).round().astype(np.uint8),
                     holdout_nn_distances=reference.holdout_nn_distances,
                     info=np.array(json.dumps(info)))
    return Path(path)


def load_reference(path: str | Path) -> tuple[Reference, dict]:
    """Read ``reference.npz``; one-line error when it is missing or not a reference."""
    path = Path(path)
    if not path.is_file():
        raise DgmError(f"evaluator reference not found: {path} (run the `evaluator` stage)")
    try:
        with np.load(path, allow_pickle=False) as data:
            info = json.loads(str(data["info"]))
            reference = Reference(
                features=data["features"], histogram=data["histogram"],
                pixels=data["pixels"].astype(np.float32) / 255.0,
                holdout_nn_distances=data["holdout_nn_distances"],
            )
    except (OSError, ValueError, KeyError) as exc:
        raise DgmError(f"{path} is not a dgm evaluator reference ({exc})") from None
    return reference, info
