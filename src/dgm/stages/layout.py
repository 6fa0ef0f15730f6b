"""Where each stage writes under ``artifacts/``, and the JSON files stages exchange."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgm.config import Params
from dgm.errors import DgmError
from dgm.paths import atomic_path, home_root, plain_name, project_root
from dgm.storage import ClusterConfig, storage_location


@dataclass(frozen=True)
class Layout:
    """Where each stage writes, for one dataset."""

    root: Path
    dataset: str

    def __post_init__(self) -> None:
        plain_name(self.dataset, "dataset")

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def raw_dir(self) -> Path:
        """The DVC-tracked raw data (``data.dvc``)."""
        return self.root / "data"

    @property
    def data_dir(self) -> Path:
        return self.artifacts / "data" / self.dataset

    @property
    def evaluator_dir(self) -> Path:
        return self.artifacts / "evaluator" / self.dataset

    def model_dir(self, model: str) -> Path:
        return self.artifacts / "models" / self.dataset / plain_name(model, "model")

    def eval_dir(self, model: str) -> Path:
        return self.artifacts / "eval" / self.dataset / plain_name(model, "model")

    @property
    def eval_root(self) -> Path:
        return self.artifacts / "eval" / self.dataset

    def report_file(self) -> Path:
        return self.artifacts / "reports" / f"{self.dataset}.md"

    def registry_file(self, model: str) -> Path:
        return self.artifacts / "registry" / self.dataset / f"{plain_name(model, 'model')}.json"

    def samples_file(self, model: str) -> Path:
        name = plain_name(model, "model")
        return self.artifacts / "samples" / self.dataset / f"{name}.parquet"

    @property
    def ray_storage(self) -> Path:
        """Ray Train and Tune results of a one-machine run (``cluster.storage: null``), in
        the repository's ``artifacts/`` even for an experiment DVC runs in a temporary copy
        (:func:`~dgm.paths.home_root`)."""
        return home_root(self.root) / "artifacts" / "ray_results"

    def ray_storage_of(self, cluster: ClusterConfig) -> str:
        """Where Ray Train and Tune keep runs: ``cluster.storage`` (a URI, or a path every
        node mounts, relative to the project root) or :attr:`ray_storage`."""
        return storage_location(cluster.storage or self.ray_storage, self.root)

    @property
    def pointers(self) -> Path:
        """The driver's records of its runs and studies (what ``--resume`` continues)."""
        return self.ray_storage

    def tune_dir(self, model: str) -> Path:
        """The `tune` stage's outputs: best.yaml, results.parquet, curves.csv."""
        return self.artifacts / "tune" / self.dataset / plain_name(model, "model")

    def study_pointer(self, model: str) -> Path:
        """Which study ``dgm tune --resume`` continues (name, storage, MLflow parent run)."""
        return self.pointers / ".tune" / f"{self.dataset}-{plain_name(model, 'model')}.json"

    def run_pointer(self, run_name: str) -> Path:
        """The MLflow run of Ray Train run ``run_name`` (what ``--resume`` logs to)."""
        return self.pointers / ".mlflow" / f"{plain_name(run_name, 'run name')}.json"


def layout(params: Params, root: Path | None = None) -> Layout:
    """The layout of ``params``' dataset under ``root`` (default: the project root)."""
    return Layout(root=(root or project_root()).resolve(), dataset=params.data.name)


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a one-line error naming ``what`` when it is missing."""
    if not path.is_file():
        raise DgmError(f"{what} not found: {path}")
    return json.loads(path.read_text())
