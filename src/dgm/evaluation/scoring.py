"""Score a set of images against a dataset's real train split with the evaluator."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgm.data.parquet import DatasetMeta, read_images
from dgm.errors import DgmError
from dgm.evaluation.classifier import load_classifier
from dgm.evaluation.metrics import (
    FeatureSet,
    MetricOptions,
    Reference,
    compute,
    has_classes,
    not_applicable,
)
from dgm.evaluation.reference import (
    REFERENCE_FILE,
    build_reference,
    feature_set,
    load_reference,
    meta_from_info,
)
from dgm.paths import atomic_path


@dataclass
class ScoreResult:
    metrics: dict[str, float]
    real_histogram: np.ndarray
    generated_histogram: np.ndarray
    class_names: tuple[str, ...] = field(default_factory=tuple)
    not_applicable: tuple[str, ...] = ()  # class metrics of an evaluator without classes

    def save_histogram(self, path: str | Path) -> Path:
        """Bar chart of generated vs real class shares (PNG); without classes, a note."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = len(self.real_histogram)
        x = np.arange(k)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if k == 0:
            ax.axis("off")
            ax.text(0.5, 0.5, "unlabelled data: no classes to count\n(class metrics n/a)",
                    ha="center", va="center")
        elif k <= 30:
            ax.bar(x - 0.2, self.real_histogram, 0.4, label="real")
            ax.bar(x + 0.2, self.generated_histogram, 0.4, label="generated")
            ax.set_xticks(x, self.class_names or [str(i) for i in x], rotation=45)
        else:  # many modes (Stacked MNIST): shares as lines over the mode index
            ax.plot(x, self.real_histogram, lw=0.8, label="real")
            ax.plot(x, self.generated_histogram, lw=0.8, label="generated")
            ax.set_xlabel(f"mode (of {k})")
        if k:
            ax.set_ylabel("share")
            ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return Path(path)


def check_images(images: np.ndarray, meta: DatasetMeta, source: str) -> np.ndarray:
    """Validate images against the dataset; return uint8 (N, H, W, C).

    Accepts N×H×W (one channel) or N×H×W×C: integers in 0..255 or floats in [0, 1].
    """
    images = np.asarray(images)
    if images.ndim == 3 and meta.channels == 1:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (meta.height, meta.width, meta.channels):
        raise DgmError(f"{source}: images of shape {images.shape[1:]} do not match {meta.name} "
                       f"({meta.height}x{meta.width}x{meta.channels})")
    if len(images) < 2:
        raise DgmError(f"{source}: need at least 2 images, got {len(images)}")
    if images.dtype.kind in "iu" and images.dtype != np.uint8:  # integer pixels 0..255
        if images.min() < 0 or images.max() > 255:
            raise DgmError(f"{source}: integer images must lie in 0..255")
        images = images.astype(np.uint8)
    if images.dtype != np.uint8:
        if images.dtype.kind != "f":
            raise DgmError(f"{source}: images must be uint8 or floats, not {images.dtype}")
        images = images.astype(np.float64)
        if not np.isfinite(images).all():
            raise DgmError(f"{source}: images contain NaN or infinite values")
        if images.min() < 0 or images.max() > 1:
            raise DgmError(f"{source}: float images must lie in [0, 1]")
        images = np.rint(images * 255).astype(np.uint8)
    return images


def load_png_folder(path: Path, meta: DatasetMeta) -> np.ndarray:
    """All ``*.png`` of a folder (sorted by name) as uint8 (N, H, W, C)."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(path.glob("*.png"))
    if not files:
        raise DgmError(f"{path}: no .png files in the folder")
    mode = {1: "L", 3: "RGB"}.get(meta.channels)
    if mode is None:
        raise DgmError(f"{path}: PNG folders need a 1- or 3-channel dataset")
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                if img.mode not in (mode, "P", "1") and not (mode == "RGB" and img.mode == "RGBA"):
                    raise DgmError(f"{file}: PNG mode {img.mode} does not fit {meta.name} "
                                   f"({meta.channels} channel(s), 8-bit: mode {mode})")
                images.append(np.asarray(img.convert(mode)))
        except (UnidentifiedImageError, OSError) as exc:
            raise DgmError(f"{file}: not a readable PNG ({exc})") from None
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DgmError(f"{path}: PNGs of different sizes {sorted(shapes)}")
    return np.stack(images)


def load_samples(path: str | Path, meta: DatasetMeta) -> np.ndarray:
    """Images from dgm Parquet (file or directory of shards), a ``.npz`` with an ``images``
    array, or a folder of PNGs; validated by :func:`check_images`."""
    path = Path(path)
    if not path.exists():
        raise DgmError(f"samples not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise DgmError(f"{path}: empty file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                if "images" not in data:
                    raise DgmError(f"{path}: no 'images' array")
                images = data["images"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DgmError(f"{path}: not a readable .npz ({exc})") from None
    elif path.is_dir() and not any(path.rglob("*.parquet")):
        images = load_png_folder(path, meta)
    else:
        try:
            images = read_images(path).images
        except DgmError:
            raise
        except Exception as exc:
            raise DgmError(f"{path}: not readable as Parquet ({str(exc).splitlines()[0]})") \
                from None
    return check_images(images, meta, str(path))


class Evaluator:
    """A dataset's evaluator classifier with its reference: scores any set of images."""

    def __init__(self, classifier, reference: Reference, meta: DatasetMeta,
                 feature_scale: float = 1.0):
        self.classifier = classifier
        self.reference = reference
        self.meta = meta
        self.feature_scale = feature_scale

    @classmethod
    def open(cls, path: str | Path, data_dir: str | Path | None = None) -> Evaluator:
        """Load ``classifier.pt`` (or a directory holding it) and its ``reference.npz``.

        Without a reference beside it matching the classifier's version, the reference is
        built from the prepared dataset at ``data_dir``.
        """
        path = Path(path)
        classifier_file = path / "classifier.pt" if path.is_dir() or not path.suffix else path
        classifier = load_classifier(classifier_file)
        reference_file = classifier_file.parent / REFERENCE_FILE
        have_data = data_dir is not None and Path(data_dir).is_dir()
        if reference_file.is_file():
            try:
                reference, info = load_reference(reference_file)
            except DgmError:
                if not have_data:
                    raise
            else:
                if info.get("evaluator_version") == classifier.version:
                    return cls.from_reference(classifier, reference, info)
        if not have_data:
            raise DgmError(f"evaluator reference not found: {reference_file} "
                           "(run the `evaluator` stage)")
        return cls.from_reference(classifier, *build_reference(classifier, data_dir))

    @classmethod
    def from_reference(cls, classifier, reference: Reference, info: dict) -> Evaluator:
        return cls(classifier, reference, meta_from_info(info), info.get("feature_scale", 1.0))

    def featurize(self, images: np.ndarray) -> FeatureSet:
        """Features, posteriors and a pixel subsample of uint8 (N, H, W, C) images."""
        return feature_set(self.classifier, images, self.feature_scale)

    def label_accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Share of ``images`` the classifier assigns to the requested ``labels`` (how well
        a conditional model obeys its class input)."""
        probs = self.featurize(check_images(images, self.meta, "samples")).probs
        if probs is None:
            raise DgmError("label accuracy needs class labels: this evaluator was trained on "
                           "unlabelled data")
        return float(np.mean(probs.argmax(1) == np.asarray(labels)))

    def score(self, images: np.ndarray, metrics: list[str] | None = None,
              options: MetricOptions | None = None) -> ScoreResult:
        """Metrics of ``images`` against the real train split."""
        images = check_images(images, self.meta, "samples")
        return self.score_features(self.featurize(images), metrics, options)

    def score_features(self, gen: FeatureSet, metrics: list[str] | None = None,
                       options: MetricOptions | None = None) -> ScoreResult:
        """Metrics of already featurized images (:meth:`featurize`)."""
        values = compute(metrics, self.reference, gen, options)
        skipped = tuple(not_applicable(metrics, self.reference, gen))
        classes = has_classes(gen) and has_classes(self.reference)
        generated = gen.class_histogram if classes else np.zeros(0)
        return ScoreResult(values, self.reference.class_histogram, generated,
                           self.meta.class_names, skipped)


def score_images(
    images: np.ndarray, data_dir: Path, evaluator_dir: Path, metrics: list[str] | None = None,
    options: MetricOptions | None = None,
) -> ScoreResult:
    """Metrics of ``images`` (uint8 N×H×W×C) against the real train split at ``data_dir``."""
    return Evaluator.open(evaluator_dir, data_dir).score(images, metrics, options)
