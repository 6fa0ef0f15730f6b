"""Preparing an image folder: ``--images`` JPEGs of the procedural shapes set at ``--size``
px (class sub-folders, written once into a temporary directory), then in one run:

``prepare_images_per_s``: the `prepare` stage on it (scan, decode in a process pool, resize,
split, Parquet shards written), best of ``--repeats``; goal ≥ 2 000 images/s at 64 px on 2
cores. ``bare_pillow_images_per_s``: a bare single-process loop (``Image.open`` →
``convert("RGB")`` → NumPy) over the same files; ``ratio_to_bare_pillow`` = the first ÷ the
second (> 1: the pool more than pays for the checks, hashing and Parquet). ``decode_workers``:
the processes the stage used.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit, parser
from PIL import Image

from dgm.config import Params
from dgm.data.folder import files_below, worker_count
from dgm.data.shapes import write_shapes_folder
from dgm.stages.prepare import run as prepare


def bare_pillow(files: list[Path]) -> float:
    """Images/s of one process decoding ``files`` with Pillow, nothing else."""
    started = time.perf_counter()
    total = 0
    for path in files:
        with Image.open(path) as img:
            total += np.asarray(img.convert("RGB")).shape[0]
    assert total
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "shapes"
        started = time.perf_counter()
        write_shapes_folder(folder, args.images, resolution=args.size, image_format="jpg")
        write_s = time.perf_counter() - started
        params = Params.model_validate({"data": {"name": "folder", "folder": {
            "path": str(folder), "resolution": args.size}}})
        prepare_speed, bare_speed = 0.0, 0.0
        for repeat in range(args.repeats):  # interleaved: both see the same page cache
            started = time.perf_counter()
            rows = prepare(params, out=work / f"prepared-{repeat}", root=work)
            prepare_speed = max(prepare_speed, sum(rows.values())
                                / (time.perf_counter() - started))
            bare_speed = max(bare_speed, bare_pillow(files_below(folder)))
    emit({"images": args.images, "size": args.size, "write_folder_s": round(write_s, 1),
          "prepare_images_per_s": round(prepare_speed), "bare_pillow_images_per_s":
          round(bare_speed), "ratio_to_bare_pillow": round(prepare_speed / bare_speed, 3),
          "decode_workers": worker_count()}, args.json)


if __name__ == "__main__":
    main()
