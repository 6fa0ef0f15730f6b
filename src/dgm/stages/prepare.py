"""DVC stage `prepare`: the raw dataset (``data.name``) → Parquet shards."""

from __future__ import annotations

import shutil
from pathlib import Path

from dgm.config import Params
from dgm.data.folder import FOLDER, FolderSpec, folder_dataset
from dgm.data.parquet import write_dataset
from dgm.data.sources import DIGITS_FILE, StackedSpec, digits_file, load_raw, search_dirs
from dgm.paths import atomic_path, project_root
from dgm.stages.layout import layout


def run(params: Params, out: Path | None = None, root: Path | None = None) -> dict[str, int]:
    """Raw dataset → Parquet shards under ``artifacts/data/<dataset>`` (or ``out``)."""
    lay = layout(params, root)
    cfg = params.data
    if cfg.name == FOLDER:
        spec = FolderSpec(**cfg.folder.model_dump(exclude={"path"}),
                          on_bad_image=cfg.on_bad_image)
        raw, skipped = folder_dataset(lay.root / Path(cfg.folder.path).expanduser(), spec)
        if skipped:
            shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:3])
            print(f"skipped {len(skipped)} bad image(s): {shown}"
                  + (" …" if len(skipped) > 3 else ""))
    else:
        raw = load_raw(cfg.name, search_dirs(lay.raw_dir), cfg.allow_download,
                       stacked=StackedSpec(**cfg.stacked.model_dump()))
    rows = write_dataset(raw, out or lay.data_dir, val_fraction=cfg.val_fraction,
                         test_fraction=cfg.test_fraction, seed=cfg.seed,
                         shard_rows=cfg.shard_rows)
    print(f"prepared {cfg.name}: " + ", ".join(f"{k}={v}" for k, v in rows.items()))
    return rows


def init_raw_data(root: Path | None = None) -> Path:
    """Materialise ``data/`` (tracked by ``data.dvc``) without a DVC remote.

    ``data/digits`` receives scikit-learn's embedded ``digits.csv.gz`` — the exact bytes
    ``data.dvc`` records — so a fresh clone reproduces offline. IDX datasets are read from
    ``$DGM_DATA_DIR`` or downloaded by ``prepare``; a team with a remote uses ``dvc pull``.
    """
    data = (root or project_root()) / "data"
    target = data / "digits" / DIGITS_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(digits_file([]), tmp)
    return data
