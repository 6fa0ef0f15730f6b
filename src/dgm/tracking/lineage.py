"""Lineage of training runs and registered generators: what produced them, how to redo it.

Every key is an MLflow tag prefixed ``dgm.lineage.``: the git commit (and whether the tree
was dirty), the DVC stage, the dvc.lock md5s of the stage's data, a hash of its DVC params,
the prepared dataset's content hash, a hash of the model + train config and the evaluator's
version. ``git checkout <commit> && dvc repro <stage>`` reproduces a clean run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag
from mlflow.exceptions import MlflowException

from dgm.errors import DgmError
from dgm.tracking.mlflow_runs import client
from dgm.tracking.names import parse_model_uri

PREFIX = "dgm.lineage."
DVC_PREFIX = PREFIX + "dvc."
UNKNOWN = "unknown"
_TAG_KEY = re.compile(r"[^\w./\- ]")


def dvc_key(path: str) -> str:
    """The tag of the dvc.lock md5 of ``path`` (``dgm.lineage.dvc.<path>``)."""
    return DVC_PREFIX + _TAG_KEY.sub("_", path)


def canonical_hash(data: Any) -> str:
    """sha256 of the canonical JSON of ``data`` (sorted keys, no whitespace)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dir_md5(path: Path) -> str:
    """DVC's md5 of a directory (``<md5>.dir``: the md5 of its sorted file list), so it equals
    the hash dvc.lock records for it."""
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    entries = [{"md5": file_md5(p), "relpath": rel} for rel, p in files]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def git_info(root: Path) -> dict[str, str]:
    """HEAD commit, dirty flag and changed files of ``root``'s repository (``unknown`` when
    it is not one). dvc.lock is no input of a run (``dvc repro`` rewrites it), so not dirt."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = git("status", "--porcelain", "--", ".", ":(exclude)dvc.lock").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": UNKNOWN, "git_dirty": UNKNOWN}
    info = {"git_commit": commit, "git_dirty": str(bool(changed)).lower()}
    if changed:
        paths = [line[3:] for line in changed]
        info["git_dirty_files"] = ", ".join(paths[:10]) + (
            f" (+{len(paths) - 10} more)" if len(paths) > 10 else "")
    return info


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_dependencies(root: Path, stage: str) -> tuple[list[str], dict[str, dict]]:
    """What dvc.yaml declares for ``stage`` (``name`` or ``name@key``), resolved by DVC
    itself: (the deps' paths, {params file: the declared params' current values}); empty
    outside a DVC project or for an unknown stage."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            (declared,) = repo.stage.collect(f"{Path(root).resolve() / 'dvc.yaml'}:{stage}")
            deps = [d.def_path for d in declared.deps if not hasattr(d, "read_params")]
            params = {d.def_path: d.read_params() for d in declared.deps
                      if hasattr(d, "read_params")}
    except (DvcException, ValueError, OSError):
        return [], {}
    return deps, params


def dvc_lineage(root: Path, stage: str) -> dict[str, str]:
    """dvc.lock md5 of each data dep of ``stage`` and a hash of its DVC params.

    A data dep's md5 is the one dvc.lock records as an output of the stage producing it:
    ``dvc repro`` writes that before running ``stage``, whereas ``stage``'s own entry still
    describes its previous run. The params hash is that of the current values of the params
    the stage declares (``{file: {key: value}}``), the entry dvc.lock will record for it.
    """
    deps, params = stage_dependencies(root, stage)
    lock = (_read_yaml(root / "dvc.lock").get("stages") or {})
    produced = {out.get("path"): out.get("md5") for entry in lock.values()
                for out in (entry or {}).get("outs") or [] if isinstance(out, dict)}
    tags = {dvc_key(dep).removeprefix(PREFIX): produced[dep] for dep in deps
            if produced.get(dep)}
    if params:
        tags["dvc_params"] = canonical_hash(params)
    return tags


def evaluator_lineage(evaluator_file: Path) -> dict[str, str]:
    """The evaluator's recorded version (its params + data) and the md5 of its file."""
    if not evaluator_file.is_file():
        return {"evaluator_version": "none"}
    import torch

    try:  # the payload alone: an evaluator of an older architecture still has a version
        payload = torch.load(evaluator_file, map_location="cpu", weights_only=True)
        version = str(payload.get("version") or UNKNOWN)
    except Exception:  # not a torch file, not a dict: lineage never stops a training run
        version = UNKNOWN
    return {"evaluator_version": version, "evaluator_md5": file_md5(evaluator_file)}


def collect_lineage(*, root: Path, dataset: str, data_dir: Path, evaluator_file: Path,
                    model_config: Any, train_config: Any, stage: str) -> dict[str, str]:
    """The ``dgm.lineage.*`` tags of a training run under project ``root``: ``dataset``
    prepared in ``data_dir``, judged by ``evaluator_file``, ``model_config`` (the config
    actually trained, tuned params applied) and ``train_config``, as DVC stage ``stage``
    (``$DVC_STAGE`` when DVC runs it). Never fails for want of git, DVC files or the
    evaluator."""
    from dgm.data.parquet import read_meta

    root = Path(root)
    stage = os.environ.get("DVC_STAGE") or stage
    tags: dict[str, str] = {"stage": stage, **git_info(root)}
    tags["dataset"] = dataset
    tags["dataset_path"] = Path(data_dir).relative_to(root).as_posix()
    if data_dir.is_dir():
        tags["dataset_checksum"] = dir_md5(data_dir)
        with contextlib.suppress(DgmError):
            tags["raw_checksums"] = json.dumps(read_meta(data_dir / "train").checksums,
                                               sort_keys=True)
    tags.update(dvc_lineage(root, stage))
    tags["config_hash"] = canonical_hash({"model": model_config.model_dump(mode="json"),
                                          "train": train_config.model_dump(mode="json")})
    tags.update(evaluator_lineage(evaluator_file))
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return {PREFIX + k: str(v) for k, v in tags.items()}


# --- MLflow: write and read the tags --------------------------------------------------------
def tag_run(run_id: str, tags: Mapping[str, str], uri: str | None = None) -> None:
    """Set ``tags`` on run ``run_id`` in one batch."""
    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_dataset_input(run_id: str, lineage: Mapping[str, str], uri: str | None = None,
                      context: str = "training") -> None:
    """Record the prepared dataset of ``lineage`` (:func:`collect_lineage`) as the run's
    MLflow dataset input: its name, the DVC hash of its directory as the digest, the
    project path and git commit as the source (nothing is loaded or uploaded)."""
    checksum = lineage.get(PREFIX + "dataset_checksum")
    if not checksum:  # no prepared directory: nothing to name
        return
    source = {"path": lineage.get(PREFIX + "dataset_path"),
              "git_commit": lineage.get(PREFIX + "git_commit")}
    dataset = Dataset(name=lineage[PREFIX + "dataset"], digest=checksum, source_type="dvc",
                      source=json.dumps({k: v for k, v in source.items() if v}))
    client(uri).log_inputs(run_id, datasets=[DatasetInput(
        dataset, tags=[InputTag("mlflow.data.context", context)])])


def lineage_tags_for_version(run_id: str, uri: str | None = None) -> dict[str, str]:
    """The lineage tags of training run ``run_id``, plus ``dgm.lineage.run_id``: what a model
    version registered from that run should carry."""
    c = client(uri)
    try:
        tags = c.get_run(run_id).data.tags
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise DgmError(f"training run {run_id} is not in the tracking store "
                       f"{c.tracking_uri}: register against the store it was trained with "
                       "(MLFLOW_TRACKING_URI), or train again") from None
    return {**{k: v for k, v in tags.items() if k.startswith(PREFIX)}, PREFIX + "run_id": run_id}


def lineage_of(model_uri: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The ``dgm.lineage.*`` tags of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``models:/NAME`` (latest version) or ``runs:/RUN_ID[/...]``: the model version's tags,
    else those of the run it was registered from."""
    ref = parse_model_uri(model_uri)
    c = client(tracking_uri)
    try:
        if ref.run_id is not None:
            run_id, tags = ref.run_id, {}
        elif ref.logged_model is not None:
            raise DgmError(f"{model_uri}: give models:/NAME@ALIAS, models:/NAME/VERSION or "
                           "runs:/RUN_ID")
        else:
            if ref.alias is not None:
                mv = c.get_model_version_by_alias(ref.name, ref.alias)
            elif ref.version is not None:
                mv = c.get_model_version(ref.name, ref.version)
            else:
                versions = c.search_model_versions(f"name='{ref.name}'")
                if not versions:
                    raise DgmError(f"model {model_uri} has no versions")
                mv = max(versions, key=lambda v: int(v.version))
            run_id, tags = mv.run_id, dict(mv.tags)
        lineage = {k: v for k, v in tags.items() if k.startswith(PREFIX)}
        if not lineage and run_id:
            run_tags = c.get_run(run_id).data.tags
            lineage = {k: v for k, v in run_tags.items() if k.startswith(PREFIX)}
            if lineage:
                lineage.setdefault(PREFIX + "run_id", run_id)
    except MlflowException:
        raise DgmError(f"model {model_uri} does not exist in the registry") from None
    if not lineage:
        raise DgmError(f"{model_uri} carries no lineage (trained before lineage was recorded)")
    return lineage


# --- printing -------------------------------------------------------------------------------
def reproduce_command(lineage: Mapping[str, str]) -> str | None:
    """``git checkout <commit> && dvc repro <stage>``, or None without a known commit."""
    commit, stage = lineage.get(PREFIX + "git_commit"), lineage.get(PREFIX + "stage")
    if not commit or commit == UNKNOWN:
        return None
    return f"git checkout {commit} && dvc repro {stage or ''}".rstrip()


def lineage_warnings(lineage: Mapping[str, str]) -> list[str]:
    """Why ``reproduce_command`` may not give the same run."""
    warnings = []
    if lineage.get(PREFIX + "git_commit", UNKNOWN) == UNKNOWN:
        warnings.append("no git commit was recorded: the run cannot be checked out")
    dirty = lineage.get(PREFIX + "git_dirty")
    if dirty == "true":
        files = lineage.get(PREFIX + "git_dirty_files")
        warnings.append("the working tree was dirty" + (f" ({files})" if files else "")
                        + ": the commit alone may not reproduce this run")
    elif dirty == UNKNOWN:
        warnings.append("whether the working tree was clean is unknown")
    path = lineage.get(PREFIX + "dataset_path")
    locked = lineage.get(dvc_key(path)) if path else None
    checksum = lineage.get(PREFIX + "dataset_checksum")
    if locked and checksum and locked != checksum:
        warnings.append(f"the data trained on ({checksum}) is not the {path} dvc.lock "
                        f"recorded ({locked})")
    return warnings


def format_lineage(lineage: Mapping[str, str]) -> str:
    """``key: value`` per line (prefix dropped), then the reproduce command and warnings."""
    lines = [f"{k.removeprefix(PREFIX)}: {v}" for k, v in sorted(lineage.items())]
    command = reproduce_command(lineage)
    if command:
        lines.append(f"reproduce: {command}")
    lines += [f"warning: {w}" for w in lineage_warnings(lineage)]
    return "\n".join(lines)
