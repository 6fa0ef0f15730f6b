"""Image grids and PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from dgm.paths import atomic_path


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1, scale: int = 1):
    """Tile uint8 (N, H, W, C) images into one uint8 (rows*H, cols*W, C) grid image."""
    n, h, w, c = images.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    nrow = max(1, math.ceil(n / ncol))
    grid = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = images[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def grid_scale(height: int) -> int:
    """An upscaling factor that makes small images (8×8 digits) visible in a grid."""
    return max(1, 32 // height)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W, C) image as PNG, atomically."""
    array = image[..., 0] if image.shape[-1] == 1 else image
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def save_grid(images: np.ndarray, path: str | Path, max_images: int = 64) -> Path:
    """Save up to ``max_images`` uint8 (N, H, W, C) images as one PNG grid."""
    subset = images[:max_images]
    return save_png(make_grid(subset, scale=grid_scale(subset.shape[1])), path)
