#!/usr/bin/env bash
# Run the DVC pipeline on the Ray cluster this job runs on: `ray job submit` (README) and the
# KubeRay RayJob (pipelines/rayjob.yaml) start it on the head node, where Ray sets
# RAY_ADDRESS, so every Ray Train run and Tune study of the pipeline joins the whole cluster.
#   DGM_STORAGE            storage every node reaches (s3://…, gs://… or a mounted path):
#                          required; it becomes cluster.storage
#   MLFLOW_TRACKING_URI    the team's MLflow server (default: SQLite in the job's directory,
#                          reached by the workers through the driver's node)
#   DGM_DVC_ARGS           extra `dvc exp run` arguments, e.g.
#                          "-S configs/params.yaml:tune.num_samples=32"
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DGM_STORAGE:?set DGM_STORAGE to storage every node reaches (s3://bucket/dgm, gs://…, NFS)}"
# This job's code, not whatever dgm the image holds, runs in the driver (and is shipped to
# every worker by dgm itself).
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python -c "import dgm" 2>/dev/null || python -m pip install -q -c pipelines/constraints-cpu.txt -e .
[ -d data ] || python -m dgm.cli data init
if ! git rev-parse --git-dir >/dev/null 2>&1; then  # a job's working_dir arrives without .git
    git init -q && git add -A
    git -c user.name=dgm -c user.email=dgm@localhost commit -qm "job snapshot"
fi
# shellcheck disable=SC2086
dvc exp run -S "configs/params.yaml:cluster.storage=$DGM_STORAGE" ${DGM_DVC_ARGS:-}
