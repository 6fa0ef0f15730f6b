"""``shapes``: an embedded, procedural, seeded colour dataset of 10 classes (shape × colour).

Each image is one shape (circle, cross, ring, square, triangle) in red or blue at a random
position, size and rotation, on a low-saturation background: a random grey with a slight
tint and gradient, plus mild noise (its colour never comes near a shape colour). Rendering
is NumPy: a pixel's coverage comes from the shape's signed distance, an analytic
antialiasing that stays clean at 16 px. Image ``i`` depends only on ``(seed, i)``, so a
larger set extends a smaller one byte for byte; labels are balanced in every block of 10.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dgm.errors import DgmError
from dgm.paths import atomic_path

SHAPES = ("circle", "cross", "ring", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {"blue": (40, 100, 220), "red": (220, 50, 40)}
# Sorted, as an image folder (torchvision ImageFolder) indexes its class sub-folders.
CLASS_NAMES: tuple[str, ...] = tuple(sorted(f"{s}-{c}" for s in SHAPES for c in COLOURS))
MIN_RESOLUTION, MAX_RESOLUTION = 16, 128
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}

SIZE_RANGE = (0.20, 0.38)  # the shape's scale s, as a fraction of the side
EXTENT = 1.05  # every shape lies within EXTENT * s of its centre
COLOUR_JITTER = 10.0  # ± per channel on the shape colour
NOISE_SIGMA = 3.0
SQRT3 = math.sqrt(3.0)

Sdf = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _box(u: np.ndarray, v: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(u) - hx, np.abs(v) - hy
    ox, oy = np.maximum(qx, 0.0), np.maximum(qy, 0.0)
    return np.sqrt(ox * ox + oy * oy) + np.minimum(np.maximum(qx, qy), 0.0)


def _circle(u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    return np.sqrt(u * u + v * v) - 0.9 * s


def _ring(u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    return np.abs(np.sqrt(u * u + v * v) - 0.7 * s) - 0.22 * s  # outer 0.92 s, inner 0.48 s


def _square(u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    return _box(u, v, 0.72 * s, 0.72 * s)


def _cross(u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    return np.minimum(_box(u, v, 0.95 * s, 0.3 * s), _box(u, v, 0.3 * s, 0.95 * s))


def _triangle(u: np.ndarray, v: np.ndarray, s: float) -> np.ndarray:
    """Equilateral, centred, circumradius ``EXTENT * s`` (Inigo Quilez's exact distance)."""
    r = EXTENT * s * SQRT3 / 2  # half the side
    x, y = np.abs(u) - r, v + r / SQRT3
    fold = x + SQRT3 * y > 0
    x, y = np.where(fold, (x - SQRT3 * y) / 2, x), np.where(fold, (-SQRT3 * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0.0)
    return -np.sqrt(x * x + y * y) * np.sign(y)


SDFS: dict[str, Sdf] = {"circle": _circle, "cross": _cross, "ring": _ring,
                        "square": _square, "triangle": _triangle}
_CLASSES = tuple((SDFS[name.split("-")[0]], np.array(COLOURS[name.split("-")[1]], float))
                 for name in CLASS_NAMES)


def _check(n: int, resolution: int, seed: int) -> None:
    if n < 0:
        raise DgmError(f"shapes: the number of images must be >= 0, got {n}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise DgmError(f"shapes: resolution must be {MIN_RESOLUTION}..{MAX_RESOLUTION}, "
                       f"got {resolution}")
    if seed < 0:
        raise DgmError(f"shapes: seed must be >= 0, got {seed}")


def shape_labels(n: int, seed: int = 0) -> np.ndarray:
    """Labels of images ``0..n-1``: a seeded permutation of the 10 classes in each block of 10."""
    k = len(CLASS_NAMES)
    blocks = [np.random.default_rng([seed, 1, b]).permutation(k) for b in range(-(-n // k))]
    return np.concatenate(blocks)[:n].astype(np.int64) if blocks else np.zeros(0, np.int64)


def _render_one(label: int, rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """One float (R, R, 3) image of class ``label``, every random draw from ``rng``."""
    res = grid.shape[1]
    sdf, colour = _CLASSES[label]
    s = res * rng.uniform(*SIZE_RANGE)
    margin = EXTENT * s + 1.0
    cx, cy = rng.uniform(margin, res - margin, 2)
    theta, phi = rng.uniform(0.0, 2 * math.pi, 2)
    grey, gradient = rng.uniform(50.0, 205.0), rng.uniform(0.0, 24.0)
    tint = rng.uniform(-10.0, 10.0, 3)
    shade = colour + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3)
    noise = rng.normal(0.0, NOISE_SIGMA, (res, res, 3))

    x, y = grid[0] - cx, grid[1] - cy
    c, sn = math.cos(theta), math.sin(theta)
    coverage = np.clip(0.5 - sdf(c * x + sn * y, c * y - sn * x, s), 0.0, 1.0)[..., None]
    ramp = (math.cos(phi) * (grid[0] - res / 2) + math.sin(phi) * (grid[1] - res / 2)) / res
    background = (grey + gradient * ramp)[..., None] + tint
    return background + coverage * (shade - background) + noise


def render_shapes(n: int, resolution: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images, uint8 (N, R, R, 3), and their int64 labels (indices into CLASS_NAMES).

    Image ``i`` depends only on ``(seed, i)``: ``render_shapes(m)`` is a prefix of
    ``render_shapes(n)`` for ``m <= n``, byte for byte.
    """
    _check(n, resolution, seed)
    labels = shape_labels(n, seed)
    return _render_range(labels, 0, resolution, seed), labels


def _render_range(labels: np.ndarray, start: int, resolution: int, seed: int) -> np.ndarray:
    """Images ``start .. start + len(labels) - 1`` of classes ``labels``."""
    centres = np.arange(resolution, dtype=np.float64) + 0.5
    grid = np.stack(np.meshgrid(centres, centres, indexing="xy"))  # (2, R, R): x, y
    images = np.empty((len(labels), resolution, resolution, 3), np.uint8)
    for j, label in enumerate(labels):
        image = _render_one(int(label), np.random.default_rng([seed, 0, start + j]), grid)
        images[j] = np.rint(np.clip(image, 0.0, 255.0))
    return images


def write_shapes_folder(out: Path, n: int, resolution: int = 32, seed: int = 0,
                        image_format: str = "png") -> dict[str, int]:
    """Write ``out/<class>/<i:05d>.<format>`` (``i``: the image's index in render_shapes).

    Atomic: written beside ``out`` and renamed onto it. Refuses an existing non-empty
    ``out``. Returns the number of images per class, in CLASS_NAMES order.
    """
    from PIL import Image

    _check(n, resolution, seed)
    fmt = image_format.lower()
    if fmt not in IMAGE_FORMATS:
        raise DgmError(f"shapes: image format must be one of {', '.join(IMAGE_FORMATS)}, "
                       f"got {image_format!r}")
    if n < len(CLASS_NAMES):
        raise DgmError(f"shapes: a folder needs >= {len(CLASS_NAMES)} images (one per class), "
                       f"got {n}")
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise DgmError(f"shapes: {out} already exists and is not an empty directory")
    labels = shape_labels(n, seed)
    options = {"quality": 95} if fmt == "jpg" else {"compress_level": 6}
    chunk = max(1, 2**21 // (3 * resolution * resolution))  # ~2 MB of pixels at a time
    with atomic_path(out) as tmp:
        for name in CLASS_NAMES:
            (tmp / name).mkdir(parents=True)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            images = _render_range(labels[start:stop], start, resolution, seed)
            for i, image in enumerate(images, start):
                path = tmp / CLASS_NAMES[labels[i]] / f"{i:05d}.{fmt}"
                Image.fromarray(image).save(path, format=IMAGE_FORMATS[fmt], **options)
    return {name: int((labels == k).sum()) for k, name in enumerate(CLASS_NAMES)}
