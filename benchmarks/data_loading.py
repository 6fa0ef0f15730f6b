"""Parquet → tensor loading of the MNIST train split: ``images_per_s``, ``first_batch_s``.

``first_batch_s``: from nothing in memory to the first training batch as a tensor.
``images_per_s``: images of one full pass (read + decode + batches), best of --repeats.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import emit, mirror, parser, prepared
from torch.utils.data import DataLoader

from dgm.data.loading import load_split_tensors


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dgm-bench")
    args = p.parse_args()
    dataset = "mnist" if mirror() else "digits"
    root = prepared(dataset, args.cache)

    first_batch, full = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        data = load_split_tensors(root, "train")
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)
        iterator = iter(loader)
        next(iterator)
        first_batch.append(time.perf_counter() - started)
        n = args.batch_size
        for images, _ in iterator:
            n += len(images)
        full.append((n, time.perf_counter() - started))
    n, seconds = min(full, key=lambda item: item[1])
    emit({"dataset": dataset, "images": n, "batch_size": args.batch_size,
          "first_batch_s": round(min(first_batch), 4), "full_pass_s": round(seconds, 4),
          "images_per_s": round(n / seconds, 1)}, args.json)


if __name__ == "__main__":
    main()
