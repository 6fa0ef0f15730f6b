"""Image grids and PNG files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dgm.images import grid_scale, make_grid, save_grid, save_png


def numbered(n, h=3, w=2, c=1) -> np.ndarray:
    """Image i is filled with the value i + 1 (so padding, 0, is distinguishable)."""
    return (np.arange(1, n + 1, dtype=np.uint8)[:, None, None, None]
            * np.ones((1, h, w, c), np.uint8))


@pytest.mark.parametrize(
    ("n", "ncol", "rows", "cols"),
    [(1, None, 1, 1), (4, None, 2, 2), (5, None, 2, 3), (10, None, 3, 4), (64, None, 8, 8),
     (7, 2, 4, 2), (3, 5, 1, 5), (0, None, 1, 1)],
)
def test_make_grid_shape(n, ncol, rows, cols):
    h, w, c, pad = 3, 2, 1, 1
    grid = make_grid(numbered(n, h, w, c), ncol=ncol)
    assert grid.dtype == np.uint8
    assert grid.shape == (rows * (h + pad) + pad, cols * (w + pad) + pad, c)


def test_make_grid_places_images_row_major():
    grid = make_grid(numbered(5, 3, 2), pad=1)  # 3 columns, 2 rows
    assert grid.shape == (9, 10, 1)
    for i in range(5):
        r, col = divmod(i, 3)
        top, left = 1 + r * 4, 1 + col * 3
        assert np.all(grid[top : top + 3, left : left + 2] == i + 1)
    assert np.all(grid[5:8, 7:9] == 0)  # the empty sixth cell
    assert np.all(grid[0] == 0) and np.all(grid[:, 0] == 0)  # outer padding
    assert int(grid.astype(int).sum()) == 6 * sum(range(1, 6))  # nothing else is drawn


def test_make_grid_pad_and_scale():
    images = numbered(2, 2, 2, 3)
    grid = make_grid(images, ncol=2, pad=0, scale=3)
    assert grid.shape == (6, 12, 3)
    assert np.all(grid[:, :6] == 1) and np.all(grid[:, 6:] == 2)
    padded = make_grid(images, ncol=1, pad=2, scale=2)
    assert padded.shape == ((2 * (2 + 2) + 2) * 2, (1 * (2 + 2) + 2) * 2, 3)


@pytest.mark.parametrize(("height", "scale"), [(8, 4), (28, 1), (32, 1), (10, 3), (64, 1)])
def test_grid_scale(height, scale):
    assert grid_scale(height) == scale


@pytest.mark.parametrize("channels", [1, 3])
def test_save_png_round_trip(tmp_path, channels):
    image = np.random.default_rng(0).integers(0, 256, (7, 5, channels), dtype=np.uint8)
    path = save_png(image, tmp_path / "out" / "x.png")
    assert path == tmp_path / "out" / "x.png"
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temporary left behind
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode == ("L" if channels == 1 else "RGB")
        back = np.asarray(img)
    np.testing.assert_array_equal(back, image[..., 0] if channels == 1 else image)


def test_save_png_overwrites(tmp_path):
    path = tmp_path / "x.png"
    save_png(np.zeros((2, 2, 1), np.uint8), path)
    save_png(np.full((3, 4, 1), 200, np.uint8), path)
    with Image.open(path) as img:
        assert img.size == (4, 3)
        assert np.all(np.asarray(img) == 200)


def test_save_grid_caps_and_scales(tmp_path):
    images = numbered(100, 8, 8)
    path = save_grid(images, tmp_path / "grid.png", max_images=16)
    with Image.open(path) as img:
        # 16 images → 4×4 cells of 8+1 pixels plus 1, scaled ×4 for 8-pixel images.
        assert img.size == ((4 * 9 + 1) * 4, (4 * 9 + 1) * 4)
        values = set(np.unique(np.asarray(img)).tolist())
    assert values == set(range(17))  # images 1..16 and padding, nothing from 17..100
