"""Registering generators and moving the ``champion`` alias by a gating metric."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException

from dgm.errors import DgmError
from dgm.tracking.mlflow_runs import client, tracking_uri

CHAMPION = "champion"
METRIC_TAG = "dgm.gating_metric"
VALUE_TAG = "dgm.gating_value"


@dataclass
class Decision:
    """What ``register`` did."""

    name: str
    version: str
    metric: str
    value: float
    champion_version: str | None
    champion_value: float | None
    promoted: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def model_name(dataset: str, model: str) -> str:
    """The registered name of a generator, e.g. ``dgm-digits-gan``."""
    return f"dgm-{dataset}-{model}"


def beats(candidate: float, incumbent: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``candidate`` improves on ``incumbent`` by at least ``min_delta``."""
    if not math.isfinite(candidate):
        return False
    if incumbent is None or not math.isfinite(incumbent):
        return True
    if mode == "min":
        return candidate < incumbent - min_delta
    return candidate > incumbent + min_delta


def register_generator(
    model_uri: str, name: str, metric: str, value: float, mode: str = "min",
    min_delta: float = 0.0, run_id: str | None = None, uri: str | None = None,
) -> Decision:
    """Register ``model_uri`` as a new version of ``name``; make it ``champion`` if it wins."""
    c = client(uri or tracking_uri())
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="dgm generator (pyfunc: predict → images)")
    try:
        incumbent = c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        incumbent = None
    incumbent_value = None
    if incumbent is not None and VALUE_TAG in incumbent.tags:
        incumbent_value = float(incumbent.tags[VALUE_TAG])
    version = c.create_model_version(
        name, model_uri, run_id=run_id,
        tags={METRIC_TAG: metric, VALUE_TAG: repr(float(value))},
    )
    promoted = beats(value, incumbent_value, mode, min_delta)
    if promoted:
        c.set_registered_model_alias(name, CHAMPION, version.version)
        message = (f"{name} v{version.version}: {metric}={value:.4g} is the new {CHAMPION}"
                   + (f" (was v{incumbent.version}, {metric}={incumbent_value:.4g})"
                      if incumbent is not None and incumbent_value is not None else ""))
    else:
        message = (f"{name} v{version.version}: {metric}={value:.4g} does not beat {CHAMPION} "
                   f"v{incumbent.version} ({metric}={incumbent_value:.4g}); alias unchanged")
    c.set_model_version_tag(name, version.version, "dgm.decision",
                            "promoted" if promoted else "kept_incumbent")
    return Decision(
        name=name, version=str(version.version), metric=metric, value=float(value),
        champion_version=None if incumbent is None else str(incumbent.version),
        champion_value=incumbent_value, promoted=promoted, message=message,
    )


def resolve_model_uri(model_uri: str, uri: str | None = None) -> None:
    """Fail with one line if ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` is unknown."""
    if not model_uri.startswith("models:/"):
        return
    ref = model_uri.removeprefix("models:/")
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise DgmError(f"model {model_uri} does not exist: there is no MLflow store at {uri}")
    c = client(uri)
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            c.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, version = ref.split("/", 1)
            c.get_model_version(name, version)
        elif ref.startswith("m-"):  # an MLflow 3 logged model id
            c.get_logged_model(ref)
        else:
            c.get_registered_model(ref)
    except MlflowException:
        raise DgmError(f"model {model_uri} does not exist in the registry at {uri}") from None
    except Exception as exc:  # unreachable server and the like
        raise DgmError(f"cannot reach the MLflow registry: {str(exc).splitlines()[0]}") from None
