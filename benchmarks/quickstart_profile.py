"""Where the quickstart's time goes: quickstart (a)'s `dvc repro` in a temporary clone of the
committed project, seconds per stage split into process start-up (interpreter and imports), Ray
start-up, Ray Train's overhead around the workers' own loop, Ray Tune, MLflow I/O and the
rest (the stage's own work); plus the lines a user would read as trouble.

    python benchmarks/quickstart_profile.py --json results/quickstart_profile.json
    python benchmarks/quickstart_profile.py --small   # the pipeline test's tiny budgets
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import REPO, emit, parser

TROUBLE = re.compile(r"Traceback|Error|WARNING|Warning:")
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
# the budgets of tests/integration/test_pipeline.py: the same stages, little training
SMALL = {"evaluator": {"epochs": 3},
         "train": {"epochs": 2, "batch_size": 128, "num_workers": 2, "sample_every": 1},
         "evaluate": {"num_samples": 500, "nll_importance_samples": 8, "nll_max_images": 100},
         "generate": {"num_samples": 300, "batch_size": 128},
         "tune": {"num_samples": 1, "epochs": 2, "num_workers": 1, "cpus_per_worker": 1,
                  "eval_samples": 200}}


def clone(dest: Path, small: bool) -> dict[str, str]:
    """``git clone`` of the committed project at ``dest``, its data materialised; the env."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "DGM_PROFILE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, env=env)
    if small:
        params_file = dest / "configs" / "params.yaml"
        params = yaml.safe_load(params_file.read_text())
        for section, values in SMALL.items():
            params[section].update(values)
        params["models"]["rbm"].update(gibbs_steps=100, ais_betas=2000)
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam",
                        "small budgets"], cwd=dest, check=True, env=env)
    subprocess.run(["dgm", "data", "init"], cwd=dest, check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return env


def repro(dest: Path, env: dict[str, str]) -> tuple[float, dict[str, float], list[str]]:
    """``dvc repro``: its wall time, each stage's (from dvc's "Running stage" lines) and the
    trouble lines of its combined output."""
    started = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro"], cwd=dest, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    walls: dict[str, float] = {}
    trouble: list[str] = []
    current, since = None, started
    for line in proc.stdout:
        now = time.perf_counter()
        if match := STAGE_LINE.match(line):
            if current:
                walls[current] = now - since
            current, since = match.group(1), now
        if TROUBLE.search(line):
            trouble.append(line.rstrip())
    if proc.wait() != 0:
        raise SystemExit(f"dvc repro failed (exit {proc.returncode}): {trouble[-5:]}")
    total = time.perf_counter() - started
    if current:
        walls[current] = total - (since - started)
    return total, walls, trouble


def split(record: dict) -> dict[str, float]:
    """A stage's seconds by kind (the rest is its own work)."""
    startup = record.get("startup_s") or 0.0
    ray_start = record.get("ray_start_s", 0.0)
    overhead = max(0.0, record.get("ray_train_s", 0.0) - record.get("train_loop_s", 0.0))
    tune = record.get("ray_tune_s", 0.0)
    mlflow = record.get("mlflow_s", 0.0)
    work = record["total_s"] - ray_start - overhead - tune - mlflow
    return {"startup_s": startup, "ray_start_s": ray_start, "ray_train_overhead_s": overhead,
            "ray_tune_s": tune, "mlflow_s": mlflow, "work_s": max(0.0, work)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="the pipeline test's small budgets")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dgm-quickstart-") as tmp:
        dest = Path(tmp) / "dgm"
        env = clone(dest, args.small)
        env["DGM_PROFILE"] = str(Path(tmp) / "profile.jsonl")
        total, walls, trouble = repro(dest, env)
        records = [json.loads(line) for line in Path(env["DGM_PROFILE"]).read_text().splitlines()]
        started = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=dest, env=env, check=True, capture_output=True)
        second = time.perf_counter() - started
    figures: dict[str, float | int | str] = {"budgets": "small" if args.small else "default",
                                             "repro_s": total, "second_repro_s": second,
                                             "trouble_lines": len(trouble)}
    sums: dict[str, float] = {}
    for record in records:
        stage = record["stage"]
        figures[f"{stage}.wall_s"] = walls.get(stage, float("nan"))
        for kind, seconds in split(record).items():
            figures[f"{stage}.{kind}"] = seconds
            sums[kind] = sums.get(kind, 0.0) + seconds
    figures.update({f"all.{kind}": seconds for kind, seconds in sums.items()})
    figures["all.dvc_s"] = total - sum(sums.values())  # dvc itself, between the stages
    for line in trouble[:20]:
        print(f"trouble: {line}", file=sys.stderr)
    emit(figures, args.json)


if __name__ == "__main__":
    main()
