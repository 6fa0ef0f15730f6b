#!/usr/bin/env bash
# Set up a CPU-only environment in .venv and materialise data/ (tracked by data.dvc).
# Idempotent: a second run only checks. Used by the README quickstart and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check \
    -c pipelines/constraints-cpu.txt -e ".[test]"
# data.dvc: pull from the team's DVC remote when one is configured, else rebuild offline.
if [ ! -d data ]; then
    if [ -n "$(.venv/bin/dvc remote list 2>/dev/null)" ]; then
        .venv/bin/dvc pull data.dvc
    else
        .venv/bin/dgm data init
    fi
fi
