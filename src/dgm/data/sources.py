"""Raw datasets: scikit-learn's embedded ``digits`` and IDX files (MNIST, Fashion-MNIST).

IDX files are read from ``<dir>/<dataset>/`` in each search directory (the DVC-tracked
``data/`` of the project first, then ``$DGM_DATA_DIR``), verified by MD5, or downloaded
from their canonical location when allowed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from dgm.errors import DgmError

DATA_DIR_ENV = "DGM_DATA_DIR"


@dataclass(frozen=True)
class IdxSpec:
    """An IDX dataset: its four files with their MD5s, class names and download base."""

    files: dict[str, str]
    class_names: tuple[str, ...]
    base_url: str


IDX_FILES = ("train-images", "train-labels", "t10k-images", "t10k-labels")

IDX_DATASETS: dict[str, IdxSpec] = {
    "mnist": IdxSpec(
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        class_names=tuple(str(i) for i in range(10)),
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "fashion-mnist": IdxSpec(
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}
DIGITS_FILE = "digits.csv.gz"
STACKED_PREFIX = "stacked-"
BASE_DATASETS = ("digits", *IDX_DATASETS)
DATASETS = (*BASE_DATASETS, *(STACKED_PREFIX + name for name in BASE_DATASETS))


@dataclass(frozen=True)
class StackedSpec:
    """How a stacked dataset is drawn: ``train_size``/``test_size`` images, ``seed``."""

    train_size: int = 60_000
    test_size: int = 10_000
    seed: int = 0
    channels: int = 3


@dataclass
class RawDataset:
    """Verified arrays of one dataset; images are uint8 (N, H, W, C)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: list[str]
    checksums: dict[str, str] = field(default_factory=dict)
    channel_class_names: list[str] = field(default_factory=list)  # stacked datasets only
    train_paths: list[str] | None = None  # image folders: each image's file, relative


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def search_dirs(project_data: Path | None = None) -> list[Path]:
    """Where raw files are looked for: the project's ``data/`` then ``$DGM_DATA_DIR``."""
    dirs = [project_data] if project_data is not None else []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]).expanduser())
    return dirs


def load_raw(name: str, dirs: list[Path], allow_download: bool = False,
             stacked: StackedSpec | None = None) -> RawDataset:
    """Load dataset ``name`` from the first directory holding it, verifying checksums.

    ``stacked-<base>`` (e.g. ``stacked-mnist``) stacks three random images of ``base`` as
    the channels of one image (:func:`stack`), drawn as ``stacked`` says.
    """
    if name.startswith(STACKED_PREFIX) and name[len(STACKED_PREFIX):] in BASE_DATASETS:
        base = load_raw(name[len(STACKED_PREFIX):], dirs, allow_download)
        return stack(base, stacked or StackedSpec())
    if name == "digits":
        return _load_digits(dirs)
    if name not in IDX_DATASETS:
        raise DgmError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    spec = IDX_DATASETS[name]
    paths = {fname: _locate(name, fname, spec, dirs, allow_download) for fname in spec.files}
    checksums = {}
    for fname, path in paths.items():
        actual = md5sum(path)
        if actual != spec.files[fname]:
            raise DgmError(
                f"checksum mismatch for {path}: expected md5 {spec.files[fname]}, got {actual}"
            )
        checksums[fname] = actual
    arrays = {fname.split("-idx")[0]: read_idx(path) for fname, path in paths.items()}
    return RawDataset(
        name=name,
        train_images=arrays["train-images"][..., None],
        train_labels=arrays["train-labels"].astype(np.int64),
        test_images=arrays["t10k-images"][..., None],
        test_labels=arrays["t10k-labels"].astype(np.int64),
        class_names=list(spec.class_names),
        checksums=checksums,
    )


def stack(base: RawDataset, spec: StackedSpec) -> RawDataset:
    """Stacked ``base`` (Srivastava et al. 2017): each image's channels are ``spec.channels``
    independent random one-channel images of ``base``; its label is the mode
    Σ_c y_c · K^(C-1-c) of their labels (K^C modes: 1000 for Stacked MNIST)."""
    if base.train_images.shape[-1] != 1:
        raise DgmError(f"only one-channel datasets can be stacked, not {base.name}")
    rng = np.random.default_rng(spec.seed)
    k, channels = len(base.class_names), spec.channels

    def draw(images: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, len(images), size=(size, channels))
        stacked = np.concatenate([images[idx[:, c]] for c in range(channels)], axis=-1)
        modes = sum(labels[idx[:, c]] * k ** (channels - 1 - c) for c in range(channels))
        return stacked, modes.astype(np.int64)

    train_images, train_labels = draw(base.train_images, base.train_labels, spec.train_size)
    test_images = test_labels = None
    if base.test_images is not None:
        test_images, test_labels = draw(base.test_images, base.test_labels, spec.test_size)
    width = len(str(k ** channels - 1))
    return RawDataset(
        name=STACKED_PREFIX + base.name,
        train_images=train_images, train_labels=train_labels,
        test_images=test_images, test_labels=test_labels,
        class_names=[str(m).zfill(width) for m in range(k ** channels)],
        checksums=dict(base.checksums),
        channel_class_names=list(base.class_names),
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzip-compressed IDX file of unsigned bytes into an array."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DgmError(f"{path} is not a readable gzip file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DgmError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DgmError(f"{path} is truncated inside its header")
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != expected:
        raise DgmError(f"{path} is truncated: {payload.size} of {expected} values")
    return payload.reshape(tuple(dims))


def _locate(name: str, fname: str, spec: IdxSpec, dirs: list[Path], allow_download: bool):
    for base in dirs:
        candidate = base / name / fname
        if candidate.is_file():
            return candidate
    if allow_download and dirs:
        return _download(spec.base_url + fname, dirs[0] / name / fname)
    where = ", ".join(str(d / name) for d in dirs) or "nowhere (no data directory)"
    raise DgmError(
        f"raw file {fname} of {name} not found in {where}; "
        f"set {DATA_DIR_ENV} to a mirror or data.allow_download: true"
    )


def _download(url: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DgmError(f"download of {url} failed: {exc}") from None
    os.replace(tmp, dest)
    return dest


def digits_file(dirs: list[Path]) -> Path:
    """The digits CSV: a copy under a search dir if there is one, else scikit-learn's."""
    for base in dirs:
        candidate = base / "digits" / DIGITS_FILE
        if candidate.is_file():
            return candidate
    return Path(str(resources.files("sklearn.datasets") / "data" / DIGITS_FILE))


def _load_digits(dirs: list[Path]) -> RawDataset:
    path = digits_file(dirs)
    table = np.loadtxt(path, delimiter=",")
    # 8x8 images with values 0..16, rescaled to the full uint8 range.
    images = np.rint(table[:, :-1] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8, 1)
    return RawDataset(
        name="digits",
        train_images=images,
        train_labels=table[:, -1].astype(np.int64),
        test_images=None,
        test_labels=None,
        class_names=[str(i) for i in range(10)],
        checksums={DIGITS_FILE: md5sum(path)},
    )
