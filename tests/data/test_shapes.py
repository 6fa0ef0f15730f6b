"""The embedded colour dataset: determinism, balance, separable modes, the folder it writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dgm.data.folder import FolderSpec, load_folder
from dgm.data.shapes import CLASS_NAMES, COLOURS, render_shapes, shape_labels, write_shapes_folder
from dgm.errors import DgmError
from dgm.evaluation.classifier import accuracy, train_classifier


def test_images_depend_only_on_seed_and_index():
    big, big_labels = render_shapes(30, resolution=16, seed=3)
    small, small_labels = render_shapes(12, resolution=16, seed=3)
    assert big.shape == (30, 16, 16, 3) and big.dtype == np.uint8
    assert np.array_equal(big[:12], small) and np.array_equal(big_labels[:12], small_labels)
    other, _ = render_shapes(12, resolution=16, seed=4)
    assert not np.array_equal(other, small)


def test_every_block_of_ten_holds_each_class_once():
    labels = shape_labels(95, seed=1)
    for start in range(0, 90, 10):
        assert sorted(labels[start:start + 10].tolist()) == list(range(10))
    assert np.bincount(labels, minlength=10).min() == 9 and len(labels) == 95
    assert len(CLASS_NAMES) == 10 and list(CLASS_NAMES) == sorted(CLASS_NAMES)


def test_the_shape_carries_its_colour():
    images, labels = render_shapes(200, resolution=32, seed=0)
    for k, name in enumerate(CLASS_NAMES):
        target = np.array(COLOURS[name.split("-")[1]], float)
        for image in images[labels == k][:5].astype(float):
            # the pixels nearest the class colour are within its jitter + noise
            distance = np.linalg.norm(image - target, axis=-1)
            assert np.sort(distance.ravel())[10] < 30.0


def test_the_ten_modes_are_separable():
    """The evaluator's CNN tells the 10 classes apart: mode coverage is measurable in colour."""
    def tensors(n: int, seed: int) -> TensorDataset:
        images, labels = render_shapes(n, resolution=16, seed=seed)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return TensorDataset(x, torch.from_numpy(labels))

    train, test = tensors(2000, 0), tensors(500, 1)
    model, _ = train_classifier(train, test, (3, 16, 16), 10, epochs=6, batch_size=64, lr=3e-3,
                                weight_decay=1e-4, patience=6, seed=0, log=None)
    assert accuracy(model, test) > 0.6  # chance is 0.1; colour alone gives 0.2


def test_the_folder_reads_back_as_the_rendered_images(tmp_path: Path):
    counts = write_shapes_folder(tmp_path / "shapes", 40, resolution=16, seed=2)
    assert list(counts) == list(CLASS_NAMES) and set(counts.values()) == {4}
    found = load_folder(tmp_path / "shapes", FolderSpec(resolution=16), workers=1)
    images, labels = render_shapes(40, resolution=16, seed=2)
    order = [int(Path(p).stem) for p in found.paths]
    assert found.class_names == list(CLASS_NAMES)
    assert np.array_equal(found.images, images[order])  # PNG is lossless
    assert np.array_equal(found.labels, labels[order])


def test_refuses_a_non_empty_folder_and_bad_arguments(tmp_path: Path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DgmError, match="already exists"):
        write_shapes_folder(out, 20)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    for kwargs, message in [({"n": 5}, "one per class"), ({"n": 20, "resolution": 8}, "16..128"),
                            ({"n": 20, "image_format": "tiff"}, "png, jpg")]:
        with pytest.raises(DgmError, match=message):
            write_shapes_folder(tmp_path / "new", **kwargs)
    assert not (tmp_path / "new").exists()


def test_cli_writes_jpegs_and_fails_in_one_line(tmp_path: Path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dgm.cli", "shapes", *args],
                              capture_output=True, text=True, timeout=120)

    done = cli("--out", str(tmp_path / "jpg"), "--images", "20", "--resolution", "24",
               "--format", "jpg")
    assert done.returncode == 0, done.stderr
    assert "wrote 20 24x24 images in 10 class folders" in done.stdout
    assert len(list((tmp_path / "jpg").glob("*/*.jpg"))) == 20
    failed = cli("--out", str(tmp_path / "jpg"), "--images", "20")
    assert failed.returncode == 2 and "already exists" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
