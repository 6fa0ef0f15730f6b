"""A team's own images: a folder of image files → a :class:`~dgm.data.sources.RawDataset`.

Layout (``labels: auto``): class sub-folders become labels, class names sorted
(torchvision's ``ImageFolder`` convention; images anywhere below a class folder); a flat
folder is unlabelled. ``labels: none``: every image below the folder, unlabelled.

Files are decoded through Pillow (PNG, JPEG, WebP, GIF — first frame —, BMP): EXIF
orientation applied, greyscale/RGBA/palette converted to ``channels``, then brought to
``resolution`` square pixels by ``resize`` (``crop``: shorter side then centre crop;
``stretch``; ``pad``: longer side then black borders). Decoding runs in a process pool.
Hidden files (``.name``) are ignored; any other file that does not decode is a bad image:
an error naming it, or skipped and counted (``on_bad_image: skip``).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dgm.data.sources import RawDataset
from dgm.errors import DgmError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
ResizeMode = Literal["crop", "stretch", "pad"]
# Below this many files the pool's start-up costs more than it saves.
# formats whose orientation tag can only be in ``info`` (EXIF or XMP) once opened
INFO_ORIENTED = ("JPEG", "WEBP")
POOL_MIN_FILES = 512
CHUNK_FILES = 256


@dataclass(frozen=True)
class FolderSpec:
    """How a folder becomes images: target side, channels, labels, resizing, bad files."""

    resolution: int = 32
    channels: int = 3
    labels: Literal["auto", "none"] = "auto"
    resize: ResizeMode = "crop"
    on_bad_image: Literal["error", "skip"] = "error"


@dataclass
class FolderImages:
    """The decoded images of a folder, with their relative paths and content digest."""

    images: np.ndarray  # uint8 (N, R, R, C)
    labels: np.ndarray  # int64 (N,), -1 for unlabelled
    paths: list[str]  # relative to the folder, POSIX separators
    class_names: list[str]
    digest: str  # sha256 over the sorted (path, file md5) pairs
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def files_below(folder: Path) -> list[Path]:
    """The visible files below ``folder`` (no hidden file or folder on the way), sorted."""
    found: list[str] = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(top, n) for n in names if not n.startswith(".")
                  and os.path.isfile(os.path.join(top, n))]
    return sorted(map(Path, found), key=lambda p: p.parts)  # as pathlib orders paths


def scan(root: Path, labels: Literal["auto", "none"]) -> tuple[list[Path], list[int], list[str]]:
    """The files of ``root`` in a stable order, their labels (-1: none) and class names."""
    if not root.exists():
        raise DgmError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DgmError(f"image folder {root} is not a directory")
    entries = sorted(p for p in root.iterdir() if _visible(p))
    class_dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file()]
    if labels == "none" or not class_dirs:
        files = files_below(root)
        if not files:
            raise DgmError(f"image folder {root} holds no images")
        return files, [-1] * len(files), []
    if loose:
        raise DgmError(f"image folder {root} mixes class folders with files beside them "
                       f"(e.g. {loose[0].name}); move them into a class folder or set "
                       "data.folder.labels: none")
    files, targets = [], []
    for index, class_dir in enumerate(class_dirs):
        found = files_below(class_dir)
        if not found:
            raise DgmError(f"class folder {class_dir} holds no images")
        files += found
        targets += [index] * len(found)
    return files, targets, [p.name for p in class_dirs]


def decode(data: bytes, spec: FolderSpec) -> np.ndarray:
    """One encoded image → uint8 (R, R, C) as ``spec`` says; raises ValueError/OSError."""
    from PIL import Image, ImageOps

    side = spec.resolution
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            mode = "L" if spec.channels == 1 else "RGB"
            img.draft(mode, (side, side))  # JPEG: decode at a reduced scale when larger
            if img.format not in INFO_ORIENTED or any(
                    key == "exif" or "xmp" in key.lower() for key in img.info):
                img = ImageOps.exif_transpose(img)  # reads EXIF: ~1/3 of a small JPEG's time
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            if img.mode in ("RGBA", "LA", "PA"):  # transparent pixels composite onto black
                base = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(base, img.convert("RGBA"))
            img = img.convert(mode)
            if spec.resize == "crop":
                img = ImageOps.fit(img, (side, side), Image.Resampling.BICUBIC)
            elif spec.resize == "pad":
                img = ImageOps.pad(img, (side, side), Image.Resampling.BICUBIC, color=0)
            elif img.size != (side, side):
                img = img.resize((side, side), Image.Resampling.BICUBIC)
            array = np.asarray(img, dtype=np.uint8)
    return array.reshape(side, side, spec.channels)


def _decode_files(paths: Sequence[str], spec: FolderSpec):
    """Decode a chunk of files: (images, md5s, failures as (index, reason))."""
    from PIL import UnidentifiedImageError

    out = np.zeros((len(paths), spec.resolution, spec.resolution, spec.channels), np.uint8)
    digests, failures = [], []
    for i, path in enumerate(paths):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            digests.append("")
            failures.append((i, f"unreadable ({exc.strerror or exc})"))
            continue
        digests.append(hashlib.md5(data).hexdigest())
        try:
            out[i] = decode(data, spec)
        except UnidentifiedImageError:
            failures.append((i, "not an image Pillow can decode"))
        except Exception as exc:  # Pillow raises many types for broken files
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failures.append((i, f"a broken image ({reason})"))
    return out, digests, failures


def worker_count() -> int:
    """Processes for decoding: the CPUs this process may use."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def load_folder(root: Path, spec: FolderSpec, workers: int | None = None) -> FolderImages:
    """Scan and decode ``root`` as ``spec`` says; one-line :class:`DgmError` on bad input."""
    files, targets, class_names = scan(root, spec.labels)
    names = [str(p) for p in files]
    chunks = [names[i : i + CHUNK_FILES] for i in range(0, len(names), CHUNK_FILES)]
    workers = workers or worker_count()
    if workers > 1 and len(names) >= POOL_MIN_FILES:
        # forkserver: the driver holds threads (BLAS, torch) that a forked child would
        # inherit; its children import the main module, so scripts need a __main__ guard
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
            results = list(pool.map(_decode_files, chunks, [spec] * len(chunks)))
    else:
        results = [_decode_files(chunk, spec) for chunk in chunks]
    images = np.concatenate([r[0] for r in results]) if results else None
    digests = [d for r in results for d in r[1]]
    bad = [(start + i, reason) for start, r in zip(range(0, len(names), CHUNK_FILES), results,
                                                   strict=True) for i, reason in r[2]]
    prefix = len(str(root).rstrip(os.sep)) + 1
    rel = [name[prefix:].replace(os.sep, "/") for name in names]
    if bad and spec.on_bad_image == "error":
        index, reason = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DgmError(f"{files[index]}: {reason}{more}; fix or remove it, or set "
                       "data.on_bad_image: skip")
    keep = np.ones(len(names), bool)
    keep[[i for i, _ in bad]] = False
    if not keep.any():
        raise DgmError(f"image folder {root}: none of its {len(names)} files is a readable "
                       "image")
    labels = np.asarray(targets, np.int64)[keep]
    kept_paths = [p for p, k in zip(rel, keep, strict=True) if k]
    if class_names:
        empty = [name for c, name in enumerate(class_names) if not (labels == c).any()]
        if empty:
            raise DgmError(f"class folder {root / empty[0]} holds no readable images")
    content = hashlib.sha256()
    for path, digest in sorted(zip(kept_paths, (d for d, k in zip(digests, keep, strict=True)
                                                if k), strict=True)):
        content.update(f"{path}\0{digest}\n".encode())
    return FolderImages(images=images if keep.all() else images[keep], labels=labels,
                        paths=kept_paths, class_names=class_names, digest=content.hexdigest(),
                        skipped=[(rel[i], reason) for i, reason in bad])


FOLDER = "folder"  # the ``data.name`` of an image folder


def folder_dataset(root: Path, spec: FolderSpec, workers: int | None = None,
                   ) -> tuple[RawDataset, list[tuple[str, str]]]:
    """:func:`load_folder` as a raw dataset (no test split of its own), and the skipped
    files with their reasons."""
    found = load_folder(root, spec, workers)
    raw = RawDataset(name=FOLDER, train_images=found.images, train_labels=found.labels,
                     test_images=None, test_labels=None, class_names=found.class_names,
                     checksums={"folder.sha256": found.digest}, train_paths=found.paths)
    return raw, found.skipped
