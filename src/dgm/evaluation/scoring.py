"""Score a set of images against a dataset's real train split with the evaluator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgm.data.loading import to_float_tensor
from dgm.data.parquet import DatasetMeta, read_images, read_meta, read_split
from dgm.errors import DgmError
from dgm.evaluation.classifier import extract, load_classifier
from dgm.evaluation.metrics import FeatureSet, compute
from dgm.paths import atomic_path


@dataclass
class ScoreResult:
    metrics: dict[str, float]
    real_histogram: np.ndarray
    generated_histogram: np.ndarray
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def save_histogram(self, path: str | Path) -> Path:
        """Bar chart of generated vs real class shares (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = len(self.real_histogram)
        x = np.arange(k)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(x - 0.2, self.real_histogram, 0.4, label="real")
        ax.bar(x + 0.2, self.generated_histogram, 0.4, label="generated")
        ax.set_xticks(x, self.class_names or [str(i) for i in x], rotation=45)
        ax.set_ylabel("share")
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return Path(path)


def check_images(images: np.ndarray, meta: DatasetMeta, source: str) -> np.ndarray:
    """Validate generated images against the dataset; return uint8 (N, H, W, C)."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (meta.height, meta.width, meta.channels):
        raise DgmError(f"{source}: images of shape {images.shape[1:]} do not match {meta.name} "
                       f"({meta.height}x{meta.width}x{meta.channels})")
    if len(images) < 2:
        raise DgmError(f"{source}: need at least 2 images, got {len(images)}")
    if images.dtype != np.uint8:
        images = images.astype(np.float64)
        if not np.isfinite(images).all():
            raise DgmError(f"{source}: images contain NaN or infinite values")
        if images.min() < 0 or images.max() > 1:
            raise DgmError(f"{source}: float images must lie in [0, 1]")
        images = np.rint(images * 255).astype(np.uint8)
    return images


def load_samples(path: str | Path, meta: DatasetMeta) -> np.ndarray:
    """Images from dgm Parquet (file or directory) or a ``.npz`` with an ``images`` array."""
    path = Path(path)
    if not path.exists():
        raise DgmError(f"samples not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                if "images" not in data:
                    raise DgmError(f"{path}: no 'images' array")
                images = data["images"]
        except (ValueError, OSError) as exc:
            raise DgmError(f"{path}: not a readable .npz ({exc})") from None
    else:
        try:
            images = read_images(path).images
        except DgmError:
            raise
        except Exception as exc:
            raise DgmError(f"{path}: not readable as Parquet ({str(exc).splitlines()[0]})") \
                from None
    return check_images(images, meta, str(path))


def score_images(
    images: np.ndarray, data_dir: Path, evaluator_dir: Path, metrics: list[str] | None = None
) -> ScoreResult:
    """Metrics of ``images`` (uint8 N×H×W×C) against the real train split."""
    meta = read_meta(Path(data_dir) / "train")
    images = check_images(images, meta, "samples")
    classifier = load_classifier(Path(evaluator_dir) / "classifier.pt")
    real = FeatureSet(*extract(classifier, to_float_tensor(read_split(data_dir, "train").images)))
    gen = FeatureSet(*extract(classifier, to_float_tensor(images)))
    values = compute(metrics, real, gen)
    return ScoreResult(values, real.class_histogram, gen.class_histogram, meta.class_names)
