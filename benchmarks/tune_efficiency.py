"""ASHA + Optuna against a full grid of the same space and trial budget, in one run (digits).

The space: ``--model vae`` searches the learning rate (log-uniform over [3e-4, 1e-2]) and the
latent size (4, 8 or 16); ``--model gan`` the generator's learning rate (log-uniform over
[5e-5, 3e-3]) and the loss (non-saturating, LSGAN or hinge). The grid runs every point of the
space's lattice (``--grid-points`` log-spaced learning rates, both ends included, × every
choice) once, each trial for ``--epochs`` epochs (FIFO: no early stopping); the ASHA + Optuna
(TPE) study runs as many trials as the grid has points, over the continuous space, stopping
weak trials from epoch ``--grace`` on. The model's width is ``--width`` (192 by default), so
that a trial's training outweighs its start-up as in a real search (at the params' width of
32 a digits epoch of the VAE takes ≈ 0.4 s and the comparison measures start-up instead).
Both on the same local Ray (1 trial at a time, ``--workers`` Ray Train workers per trial;
trial actors reused), both scored by the pipeline's val metric (``val_nll_nats`` for the
VAE, ``val_fid`` for the GAN; lower is better). Figures: ``time_ratio`` = ASHA study wall
time ÷ grid wall time (goal ≤ 0.35), ``metric_ratio`` = best ASHA score ÷ best grid score
(goal ≤ 1.05: within 5 %), the wall times, trial epochs, best scores, and the two studies
solved for the cost of one trial's start-up and of one epoch
(``wall = trials × startup_s + trial epochs × epoch_s``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from _common import emit, parser

REPO = Path(__file__).resolve().parents[1]
SPACES = {
    "vae": {"lr": {"loguniform": [3e-4, 1e-2]}, "latent_dim": {"choice": [4, 8, 16]}},
    "gan": {"lr_g": {"loguniform": [5e-5, 3e-3]},
            "loss": {"choice": ["nonsaturating", "lsgan", "hinge"]}},
}


def lattice(space: dict, points: int) -> dict:
    """The grid's version of ``space``: each log-uniform range as ``points`` log-spaced
    values (both ends included), choices as they are."""
    import numpy as np

    return {name: ({"choice": [float(f"{v:.3g}") for v in np.geomspace(*dim["loguniform"],
                                                                       points)]}
                   if "loguniform" in dim else dim)
            for name, dim in space.items()}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", choices=sorted(SPACES), default="vae")
    p.add_argument("--epochs", type=int, default=27, help="per trial (ASHA's max_t)")
    p.add_argument("--grid-points", type=int, default=4,
                   help="log-spaced learning rates of the grid")
    p.add_argument("--width", type=int, default=192,
                   help="the model's width: 192 makes a digits trial training-bound (≈ 5 s "
                        "an epoch against ≈ 14 s of start-up); 0 keeps configs/params.yaml's")
    p.add_argument("--grace", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "dgm-tune-bench")
    args = p.parse_args()

    import ray

    from dgm.config import Params, load_params
    from dgm.stages.evaluator import run as train_evaluator
    from dgm.stages.layout import layout
    from dgm.stages.prepare import run as prepare
    from dgm.stages.tune import run as tune
    from dgm.tuning.space import grid_points

    base = load_params(REPO / "configs" / "params.yaml")
    base.data.name = "digits"
    root = args.root.resolve()
    (root / "dvc.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    lay = layout(base, root)
    if not (lay.evaluator_dir / "classifier.pt").is_file():
        prepare(base, root=root)
        train_evaluator(base, root=root)
    space, model = SPACES[args.model], args.model
    ray.init(address="local", num_cpus=2, logging_level="WARNING")  # with the dashboard

    def study(searcher: str, scheduler: str, samples: int, searched: dict) -> tuple[float, dict]:
        raw = base.model_dump(by_alias=True)
        if args.width:
            raw["models"][model]["width"] = args.width
        raw["train"].update({"batch_size": args.batch_size, "sample_every": 10_000})
        raw["tune"] = {
            "models": [model], "searcher": searcher, "scheduler": scheduler,
            "num_samples": samples, "epochs": args.epochs, "grace_period": args.grace,
            "reduction_factor": args.reduction_factor, "num_workers": args.workers,
            "cpus_per_worker": 1.0 / args.workers,  # the trial's driver 1 CPU + 1 CPU
            "trial_cpus": 1, "eval_samples": args.eval_samples, "space": {model: searched}}
        params = Params.model_validate(raw)
        started = time.perf_counter()
        record = tune(params, model, root=root)
        return time.perf_counter() - started, record

    grid_space = lattice(space, args.grid_points)
    points = len(grid_points(Params.model_validate(
        {"models": {model: {}}, "tune": {"models": [model], "space": {model: grid_space}}}
    ).search_space(model)))
    grid_s, grid = study("grid", "fifo", 1, grid_space)
    grid_epochs = _epochs(lay.tune_dir(model))
    asha_s, asha = study("optuna", "asha", points, space)
    asha_epochs = _epochs(lay.tune_dir(model))
    epoch_s = (grid_s - asha_s) / max(grid_epochs - asha_epochs, 1)
    emit({
        "dataset": "digits", "model": model, "metric": grid["metric"], "trials": points,
        "epochs_per_trial": args.epochs,
        "grid_wall_s": round(grid_s, 1), "asha_wall_s": round(asha_s, 1),
        "time_ratio": round(asha_s / grid_s, 3),
        "grid_best": round(grid["score"], 4), "asha_best": round(asha["score"], 4),
        "metric_ratio": round(asha["score"] / grid["score"], 4),
        "grid_trial_epochs": grid_epochs, "asha_trial_epochs": asha_epochs,
        "epoch_fraction": round(asha_epochs / grid_epochs, 3),
        "width": args.width or base.model(model).width,
        "reduction_factor": args.reduction_factor, "grace": args.grace,
        "epoch_s": round(epoch_s, 3),
        "startup_s_per_trial": round((grid_s - grid_epochs * epoch_s) / points, 2),
        "grid_best_params": str(grid["params"]), "asha_best_params": str(asha["params"]),
    }, args.json)


def _epochs(out: Path) -> int:
    import pyarrow.parquet as pq

    return int(sum(pq.read_table(out / "results.parquet").column("epochs").to_pylist()))


if __name__ == "__main__":
    main()
