"""The names dgm gives things in MLflow, and the one parser of model URIs."""

from __future__ import annotations

from dataclasses import dataclass

from dgm.errors import DgmError


def experiment_name(dataset: str) -> str:
    """The MLflow experiment of every run on ``dataset``, e.g. ``dgm-digits``."""
    return f"dgm-{dataset}"


def model_name(dataset: str, model: str) -> str:
    """The registered name of a generator, e.g. ``dgm-digits-gan``."""
    return f"dgm-{dataset}-{model}"


@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI: exactly one way of naming a model is set.

    ``models:/NAME@ALIAS`` → name, alias; ``models:/NAME/VERSION`` → name, version;
    ``models:/NAME`` → name (its latest version); ``models:/m-…`` → logged_model (an MLflow 3
    logged model id); ``runs:/RUN_ID[/path]`` → run_id.
    """

    uri: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    logged_model: str | None = None
    run_id: str | None = None

    @property
    def is_registered(self) -> bool:
        return self.name is not None


def parse_model_uri(uri: str) -> ModelRef:
    """Split ``uri`` (see :class:`ModelRef`); a one-line error for anything else."""
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
        if run_id:
            return ModelRef(uri, run_id=run_id)
    elif uri.startswith("models:/"):
        ref = uri.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            if name and alias:
                return ModelRef(uri, name=name, alias=alias)
        elif "/" in ref:
            name, version = ref.split("/", 1)
            if name and version:
                return ModelRef(uri, name=name, version=version)
        elif ref.startswith("m-"):
            return ModelRef(uri, logged_model=ref)
        elif ref:
            return ModelRef(uri, name=ref)
    raise DgmError(f"{uri}: give models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID")
