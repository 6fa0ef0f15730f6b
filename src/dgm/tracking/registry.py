"""Registering generators: the gate between a candidate and the current ``champion``.

Each registration adds a version (none is ever deleted). The candidate takes ``champion`` when
it beats the incumbent on the gating metric by at least ``min_delta`` (in the metric's
direction); otherwise it takes ``challenger``. The version's tags record the decision, the
gating metric, both values and the version it was compared with.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from dgm.errors import DgmError
from dgm.timing import timed
from dgm.tracking.mlflow_runs import client, registry_uri, tracking_uri
from dgm.tracking.names import parse_model_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG = "dgm.gating_metric"
VALUE_TAG = "dgm.gating_value"
MODE_TAG = "dgm.gating_mode"
MIN_DELTA_TAG = "dgm.gating_min_delta"
DECISION_TAG = "dgm.decision"
INCUMBENT_VERSION_TAG = "dgm.incumbent_version"
INCUMBENT_VALUE_TAG = "dgm.incumbent_value"


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


def beats(candidate: float, incumbent: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``candidate`` improves on ``incumbent`` by at least ``min_delta``."""
    if not math.isfinite(candidate):
        return False
    if incumbent is None or not math.isfinite(incumbent):
        return True
    if mode == "min":
        return candidate < incumbent - min_delta
    return candidate > incumbent + min_delta


@timed("mlflow")
def register_generator(
    model_uri: str, name: str, metric: str, value: float, mode: str = "min",
    min_delta: float = 0.0, uri: str | None = None,
    tags: dict[str, str] | None = None,
) -> Decision:
    """Register ``model_uri`` as a new version of ``name`` (with ``tags``, e.g. lineage);
    it becomes ``champion`` if it beats the incumbent, else ``challenger``."""
    if not math.isfinite(value):
        raise DgmError(f"{name}: the gating metric {metric} is {value}: not registered")
    c = client(uri or tracking_uri())
    try:
        c.get_registered_model(name)
        new_model = False
    except MlflowException:  # mlflow.register_model creates it (without "already exists")
        new_model = True
    try:
        incumbent = c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        incumbent = None
    incumbent_value = None
    if incumbent is not None and VALUE_TAG in incumbent.tags:
        incumbent_value = float(incumbent.tags[VALUE_TAG])
    promoted = beats(value, incumbent_value, mode, min_delta)
    gate = {METRIC_TAG: metric, VALUE_TAG: repr(float(value)), MODE_TAG: mode,
            MIN_DELTA_TAG: repr(float(min_delta)),
            DECISION_TAG: CHAMPION if promoted else CHALLENGER}
    if incumbent is not None:
        gate[INCUMBENT_VERSION_TAG] = str(incumbent.version)
        gate[INCUMBENT_VALUE_TAG] = repr(incumbent_value)
    # mlflow.register_model resolves a logged model's URI to its source and id (a tracking
    # server's registry wants both); the tracking URI was set by ``client``.
    version = mlflow.register_model(model_uri, name, tags={**(tags or {}), **gate})
    if new_model:
        c.update_registered_model(name, description="dgm generator (pyfunc: predict → images)")
    c.set_registered_model_alias(name, CHAMPION if promoted else CHALLENGER, version.version)
    if promoted:
        message = (f"{name} v{version.version}: {metric}={value:.4g} is the new {CHAMPION}"
                   + (f" (was v{incumbent.version}, {metric}={incumbent_value:.4g})"
                      if incumbent is not None and incumbent_value is not None else ""))
    else:
        message = (f"{name} v{version.version}: {metric}={value:.4g} does not beat {CHAMPION} "
                   f"v{incumbent.version} ({metric}={incumbent_value:.4g}"
                   f"{f', min_delta {min_delta:g}' if min_delta else ''}): it is the "
                   f"{CHALLENGER}")
    return Decision(
        name=name, version=str(version.version), metric=metric, value=float(value),
        champion_version=None if incumbent is None else str(incumbent.version),
        champion_value=incumbent_value, promoted=promoted, message=message,
    )


def resolve_model_uri(model_uri: str, uri: str | None = None) -> None:
    """Fail with one line if ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` is unknown
    (other URIs, e.g. ``runs:/``, are left to MLflow)."""
    if not model_uri.startswith("models:/"):
        return
    ref = parse_model_uri(model_uri)
    uri = uri or tracking_uri()
    registry = registry_uri(uri)
    if registry.startswith("sqlite:///") and not Path(
            registry.removeprefix("sqlite:///")).is_file():
        raise DgmError(f"model {model_uri} does not exist: there is no MLflow store at "
                       f"{registry}")
    c = client(uri)
    try:
        if ref.alias is not None:
            c.get_model_version_by_alias(ref.name, ref.alias)
        elif ref.version is not None:
            c.get_model_version(ref.name, ref.version)
        elif ref.logged_model is not None:
            c.get_logged_model(ref.logged_model)
        else:
            c.get_registered_model(ref.name)
    except MlflowException:
        raise DgmError(f"model {model_uri} does not exist in the registry at {registry}"
                       ) from None
    except Exception as exc:  # unreachable server and the like
        raise DgmError(f"cannot reach the MLflow registry: {str(exc).splitlines()[0]}") from None
