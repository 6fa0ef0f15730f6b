#!/usr/bin/env bash
# Run the DVC pipeline on the Ray cluster this job runs on: `ray job submit` (README) and the
# KubeRay RayJob (pipelines/rayjob.yaml) start it on the head node, where Ray sets
# RAY_ADDRESS, so every Ray Train run and Tune study of the pipeline uses the whole cluster.
#   DGM_STORAGE            shared storage of Ray results (s3://…, gs://… or an NFS path): required
#   MLFLOW_TRACKING_URI    the team's MLflow server (default: SQLite in the job's directory)
#   DGM_DVC_ARGS           extra `dvc exp run` arguments, e.g. "-S tune.num_samples=32"
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DGM_STORAGE:?set DGM_STORAGE to storage every node shares (s3://bucket/dgm, gs://…, NFS)}"
command -v dgm >/dev/null || python -m pip install -q -c pipelines/constraints-cpu.txt -e .
[ -d data ] || dgm data init
if ! git rev-parse --git-dir >/dev/null 2>&1; then  # a job's working_dir arrives without .git
    git init -q && git add -A
    git -c user.name=dgm -c user.email=dgm@localhost commit -qm "job snapshot"
fi
shared=false; case "$DGM_STORAGE" in *://*) ;; *) shared=true ;; esac
# shellcheck disable=SC2086
dvc exp run -S "tune.storage_path=$DGM_STORAGE" -S "tune.shared_storage=$shared" ${DGM_DVC_ARGS:-}
