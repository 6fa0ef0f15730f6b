"""The image-folder source: layouts, decoding, resizing, parallel decoding, bad input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from dgm.data import folder as folder_mod
from dgm.data.folder import FolderSpec, decode, folder_dataset, load_folder
from dgm.data.parquet import read_meta, read_split, write_dataset
from dgm.errors import DgmError

RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid(path: Path, colour, size=(16, 16), fmt: str | None = None, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)
    return path


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    root = tmp_path / "pics"
    for i in range(6):
        solid(root / "red" / f"{i}.png", RED)
        solid(root / "blue" / "nested" / f"{i}.jpg", BLUE, size=(20, 12))
    (root / ".hidden").mkdir()
    (root / "red" / ".DS_Store").write_bytes(b"\0junk")
    return root


def test_class_folders_become_sorted_labels_with_their_paths(classes: Path):
    found = load_folder(classes, FolderSpec(resolution=8), workers=1)
    assert found.class_names == ["blue", "red"]
    assert found.images.shape == (12, 8, 8, 3) and found.images.dtype == np.uint8
    assert found.labels.tolist() == [0] * 6 + [1] * 6
    assert found.paths[0] == "blue/nested/0.jpg" and found.paths[-1] == "red/5.png"
    # JPEG of pure blue: within a few levels; PNG red exact
    assert np.abs(found.images[:6].astype(int) - BLUE).max() <= 3
    assert (found.images[6:] == RED).all()


def test_labels_none_and_flat_folders_are_unlabelled(classes: Path, tmp_path: Path):
    none = load_folder(classes, FolderSpec(resolution=8, labels="none"), workers=1)
    assert none.class_names == [] and (none.labels == -1).all() and len(none.paths) == 12
    flat = tmp_path / "flat"
    for i in range(3):
        solid(flat / f"{i}.bmp", RED, fmt="BMP")
    found = load_folder(flat, FolderSpec(resolution=8), workers=1)
    assert found.class_names == [] and found.labels.tolist() == [-1, -1, -1]


def test_digest_follows_content_not_mtime(classes: Path):
    spec = FolderSpec(resolution=8)
    first = load_folder(classes, spec, workers=1).digest
    os.utime(classes / "red" / "0.png", (1, 1))
    assert load_folder(classes, spec, workers=1).digest == first
    solid(classes / "red" / "0.png", (254, 0, 0))
    assert load_folder(classes, spec, workers=1).digest != first


def test_resize_modes_on_a_wide_image():
    # 40×20: left half red, right half blue, a green 10-px band in the middle
    img = Image.new("RGB", (40, 20), RED)
    img.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))
    img.paste(Image.new("RGB", (10, 20), (0, 255, 0)), (15, 0))
    data = encode(img, "PNG")
    crop = decode(data, FolderSpec(resolution=20, resize="crop"))
    assert crop.shape == (20, 20, 3)
    assert (crop[:, 7:13] == (0, 255, 0)).all()  # the centre 20 px: the band is 10 px of them
    assert (crop[:, 0:3] == RED).all() and (crop[:, -3:] == BLUE).all()
    stretch = decode(data, FolderSpec(resolution=20, resize="stretch"))
    assert (stretch[:, 9:11, 1] > 200).all() and (stretch[:, :6] == RED).all()
    pad = decode(data, FolderSpec(resolution=20, resize="pad"))
    assert (pad[:4] == 0).all() and (pad[-4:] == 0).all()  # 40×20 → 20×10 + black bands
    assert (pad[6:14, :5] == RED).all()


def test_exif_orientation_modes_and_formats():
    # a 2×1-ratio image tagged "rotate 90° CW" (orientation 6) arrives upright, 1×2
    img = Image.new("RGB", (32, 16), RED)
    img.paste(Image.new("RGB", (16, 16), BLUE), (16, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt in ("PNG", "JPEG", "WEBP"):
        upright = decode(encode(img, fmt, exif=exif), FolderSpec(resolution=16,
                                                                  resize="stretch"))
        assert (np.abs(upright[:6].astype(int) - RED) <= 40).all(), fmt
        assert (np.abs(upright[-6:].astype(int) - BLUE) <= 40).all(), fmt

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # transparent → black
    out = decode(encode(rgba, "PNG"), FolderSpec(resolution=8))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[4, 4]) == RED
    grey = decode(encode(Image.new("L", (8, 8), 128), "PNG"), FolderSpec(resolution=8))
    assert (grey == 128).all() and grey.shape == (8, 8, 3)
    one = decode(encode(Image.new("RGB", (8, 8), (255, 0, 0)), "PNG"),
                 FolderSpec(resolution=8, channels=1))
    assert one.shape == (8, 8, 1) and abs(int(one[0, 0, 0]) - 76) <= 1  # ITU-R 601 luma
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    palette.info["transparency"] = 255
    assert (decode(encode(palette, "PNG", transparency=1), FolderSpec(resolution=8))
            == BLUE).all()
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert (np.abs(decode(gif.getvalue(), FolderSpec(resolution=8)).astype(int) - RED)
            <= 8).all()  # the first frame
    webp = decode(encode(Image.new("RGB", (8, 8), BLUE), "WEBP", lossless=True),
                  FolderSpec(resolution=8))
    assert (webp == BLUE).all()


def test_parallel_decoding_matches_one_process(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "many"
    for i in range(40):
        (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), np.uint8)).save(
            root / f"c{i % 3}" / f"{i:03d}.png")
    monkeypatch.setattr(folder_mod, "POOL_MIN_FILES", 1)
    monkeypatch.setattr(folder_mod, "CHUNK_FILES", 7)
    spec = FolderSpec(resolution=16)
    serial, pooled = load_folder(root, spec, workers=1), load_folder(root, spec, workers=2)
    assert np.array_equal(serial.images, pooled.images)
    assert serial.paths == pooled.paths and serial.digest == pooled.digest
    assert np.array_equal(serial.labels, pooled.labels)


def test_written_splits_keep_paths_and_null_labels(classes: Path, tmp_path: Path):
    raw, skipped = folder_dataset(classes, FolderSpec(resolution=8, labels="none"), workers=1)
    assert skipped == []
    rows = write_dataset(raw, tmp_path / "out", val_fraction=0.2, test_fraction=0.2, seed=0,
                         shard_rows=5)
    assert sum(rows.values()) == 12
    table = pq.read_table(tmp_path / "out" / "train")
    assert table.column_names == ["image", "label", "path"]
    assert table.column("label").null_count == table.num_rows
    paths = [p for s in ("train", "val", "test")
             for p in pq.read_table(tmp_path / "out" / s).column("path").to_pylist()]
    assert sorted(paths) == sorted(raw.train_paths)
    train = read_split(tmp_path / "out", "train")
    assert (train.labels == -1).all() and read_meta(tmp_path / "out").class_names == ()
    # each row's pixels are those of the file its path names
    index = {p: i for i, p in enumerate(raw.train_paths)}
    for image, path in zip(train.images, table.column("path").to_pylist(), strict=True):
        assert np.array_equal(image, raw.train_images[index[path]])


# --- bad input through the real CLI -------------------------------------------------------
def _params(tmp_path: Path, folder: Path, **data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "folder", **data,
                                             "folder": {"path": str(folder), "resolution": 8}}}))
    return path


def _prepare(tmp_path: Path, params: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dgm.cli", "prepare", "--params", str(params),
                           "--out", str(tmp_path / "prepared")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)


def _damage(kind: str, root: Path) -> str:
    """Break the folder one way; return what the error line must name."""
    if kind == "corrupt":
        (root / "red" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\xff" * 40)
        return "2.png"
    if kind == "truncated":
        data = (root / "blue" / "nested" / "3.jpg").read_bytes()
        big = encode(Image.fromarray(np.random.default_rng(0).integers(
            0, 256, (64, 64, 3), np.uint8)), "JPEG")
        (root / "blue" / "nested" / "3.jpg").write_bytes(big[: len(big) // 2] or data)
        return "3.jpg"
    if kind == "not-an-image":
        (root / "red" / "notes.txt").write_text("hello")
        return "notes.txt"
    if kind == "empty-class":
        (root / "green").mkdir()
        return "green"
    if kind == "loose-file":
        solid(root / "stray.png", RED)
        return "stray.png"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "not-an-image", "empty-class",
                                  "loose-file", "empty-folder", "missing"])
def test_bad_folders_fail_in_one_line_and_write_nothing(kind: str, classes: Path,
                                                        tmp_path: Path):
    if kind == "empty-folder":
        target, named = tmp_path / "nothing", "nothing"
        target.mkdir()
    elif kind == "missing":
        target, named = tmp_path / "nowhere", "nowhere"
    else:
        target, named = classes, _damage(kind, classes)
    done = _prepare(tmp_path, _params(tmp_path, target))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in done.stderr, lines
    assert not (tmp_path / "prepared").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]


def test_skip_reports_the_bad_files_and_prepares_the_rest(classes: Path, tmp_path: Path):
    _damage("corrupt", classes)
    _damage("not-an-image", classes)
    done = _prepare(tmp_path, _params(tmp_path, classes, on_bad_image="skip"))
    assert done.returncode == 0, done.stderr
    assert "skipped 2 bad image(s): red/2.png" in done.stdout and "red/notes.txt" in done.stdout
    rows = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "prepared").rglob("*.parquet"))
    assert rows == 11


def test_an_earlier_output_survives_a_failed_prepare(classes: Path, tmp_path: Path):
    params = _params(tmp_path, classes)
    assert _prepare(tmp_path, params).returncode == 0
    before = sorted((tmp_path / "prepared").rglob("*.parquet"))
    _damage("corrupt", classes)
    assert _prepare(tmp_path, params).returncode == 2
    assert sorted((tmp_path / "prepared").rglob("*.parquet")) == before


def test_too_few_images_is_one_error(tmp_path: Path):
    solid(tmp_path / "two" / "a.png", RED)
    solid(tmp_path / "two" / "b.png", RED)
    raw, _ = folder_dataset(tmp_path / "two", FolderSpec(resolution=8), workers=1)
    with pytest.raises(DgmError, match="too few"):
        write_dataset(raw, tmp_path / "out", val_fraction=0.1, test_fraction=0.2, seed=0,
                      shard_rows=10)
    assert not (tmp_path / "out").exists()


def test_the_dvc_stage_script_decodes_in_a_process_pool(tmp_path: Path):
    """``python pipelines/prepare.py`` as DVC runs it: a folder over POOL_MIN_FILES goes
    through the forkserver pool, whose children re-import the script."""
    from dgm.data.shapes import write_shapes_folder

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "configs").mkdir()
    count = folder_mod.POOL_MIN_FILES + 20
    write_shapes_folder(tmp_path / "data" / "shapes", count, resolution=16)
    (tmp_path / "configs" / "params.yaml").write_text(yaml.safe_dump({"data": {
        "name": "folder", "folder": {"path": "data/shapes", "resolution": 16}}}))
    done = subprocess.run([sys.executable, str(repo / "pipelines" / "prepare.py")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "prepared folder:" in done.stdout
    out = tmp_path / "artifacts" / "data" / "folder"
    assert sum(pq.read_metadata(f).num_rows for f in out.rglob("*.parquet")) == count
