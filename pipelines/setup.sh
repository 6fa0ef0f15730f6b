#!/usr/bin/env bash
# Set up a CPU-only environment in .venv and materialise data/ (tracked by data.dvc).
#   bash pipelines/setup.sh          the package (what `dvc repro` needs)
#   bash pipelines/setup.sh --test   and its `test` extra (pytest, moto, …: the suite, CI)
# Idempotent: a second run only checks. Used by the README quickstart and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    "") extra="" ;;
    --test) extra="[test]" ;;
    *) echo "usage: bash pipelines/setup.sh [--test]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip byte-compiles one file at a time; compileall below uses every core (a third faster)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-compile \
    -c pipelines/constraints-cpu.txt -e ".${extra}"
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f .venv/.compiled ] || [ "$site" -nt .venv/.compiled ]; then
    # a few packages ship files that are not Python 3 (templates, test data): not an error
    .venv/bin/python -m compileall -q -j 0 "$site" > /dev/null 2>&1 || true
    touch .venv/.compiled
fi
# data.dvc: pull from the team's DVC remote when one is configured, else rebuild offline.
if [ ! -d data ]; then
    if [ -n "$(.venv/bin/dvc remote list 2>/dev/null)" ]; then
        .venv/bin/dvc pull data.dvc
    else
        .venv/bin/dgm data init
    fi
fi
