"""ASHA + Optuna against a full grid of the same space and trial budget, in one run (digits).

The space is finite (``--model vae``: 4 learning rates × 3 latent sizes; ``--model gan``:
4 generator learning rates × 3 losses), so the grid runs every point once, each trial for
``--epochs`` epochs (FIFO: no early stopping); the ASHA + Optuna (TPE) study runs as many
trials as the grid has points, over the same space, stopping weak trials from epoch
``--grace`` on. Both on the same local Ray (1 trial at a time, ``--workers`` Ray Train workers
per trial), both scored by the pipeline's val metric (``val_nll_nats`` for the VAE,
``val_fid`` for the GAN; lower is better). Figures: ``time_ratio`` = ASHA study wall time ÷
grid wall time (goal ≤ 0.35), ``metric_ratio`` = best ASHA score ÷ best grid score (goal
≤ 1.05: within 5 %), the wall times, trial epochs and best scores.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from _common import emit, parser

REPO = Path(__file__).resolve().parents[1]
SPACES = {
    "vae": {"lr": {"choice": [0.0003, 0.001, 0.003, 0.01]},
            "latent_dim": {"choice": [4, 8, 16]}},
    "gan": {"lr_g": {"choice": [0.00005, 0.0002, 0.0008, 0.003]},
            "loss": {"choice": ["nonsaturating", "lsgan", "hinge"]}},
}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", choices=sorted(SPACES), default="vae")
    p.add_argument("--epochs", type=int, default=27, help="per trial (ASHA's max_t)")
    p.add_argument("--grace", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "dgm-tune-bench")
    args = p.parse_args()

    import ray

    from dgm.config import Params, load_params
    from dgm.tuning.space import grid_points
    from dgm.workflow import layout, prepare, train_evaluator, tune

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

    def study(searcher: str, scheduler: str, samples: int) -> tuple[float, dict]:
        raw = base.model_dump(by_alias=True)
        raw["train"].update({"batch_size": args.batch_size, "sample_every": 10_000})
        raw["tune"] = {
            "models": [model], "searcher": searcher, "scheduler": scheduler,
            "num_samples": samples, "epochs": args.epochs, "grace_period": args.grace,
            "reduction_factor": args.reduction_factor, "num_workers": args.workers,
            "cpus_per_worker": 1.0 / args.workers,  # the trial's driver 1 CPU + 1 CPU
            "trial_cpus": 1, "eval_samples": args.eval_samples, "space": {model: space}}
        params = Params.model_validate(raw)
        started = time.perf_counter()
        record = tune(params, model, root=root)
        return time.perf_counter() - started, record

    points = len(grid_points(Params.model_validate(
        {"models": {model: {}}, "tune": {"models": [model], "space": {model: space}}}
    ).search_space(model)))
    grid_s, grid = study("grid", "fifo", 1)
    grid_epochs = _epochs(lay.tune_dir(model))
    asha_s, asha = study("optuna", "asha", points)
    asha_epochs = _epochs(lay.tune_dir(model))
    emit({
        "dataset": "digits", "model": model, "metric": grid["metric"], "trials": points,
        "epochs_per_trial": args.epochs,
        "grid_wall_s": round(grid_s, 1), "asha_wall_s": round(asha_s, 1),
        "time_ratio": round(asha_s / grid_s, 3),
        "grid_best": round(grid["score"], 4), "asha_best": round(asha["score"], 4),
        "metric_ratio": round(asha["score"] / grid["score"], 4),
        "grid_trial_epochs": grid_epochs, "asha_trial_epochs": asha_epochs,
        "grid_best_params": str(grid["params"]), "asha_best_params": str(asha["params"]),
    }, args.json)


def _epochs(out: Path) -> int:
    import pyarrow.parquet as pq

    return int(sum(pq.read_table(out / "results.parquet").column("epochs").to_pylist()))


if __name__ == "__main__":
    main()
