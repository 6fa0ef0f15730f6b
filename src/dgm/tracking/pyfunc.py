"""The MLflow pyfunc around a dgm generator: ``predict`` returns uint8 images.

The model is logged "from code" (``pyfunc_model.py``): nothing is pickled, the
generator's weights travel as an artifact loaded with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import Array

from dgm.timing import timed

MAX_SAMPLES_PER_REQUEST = 100_000


def pyfunc_source() -> str:
    """Path of the models-from-code file."""
    return str(Path(__file__).with_name("pyfunc_model.py"))


def generator_signature(image_shape) -> ModelSignature:
    """Inputs: ``num_samples``, ``seed`` and, for conditional models, ``label`` (columns or
    params; label −1: classes drawn uniformly), or one row per image with its ``latents``
    vector (and ``label``); output: (N, H, W, C) uint8."""
    channels, height, width = image_shape
    return ModelSignature(
        inputs=Schema([ColSpec("long", "num_samples", required=False),
                       ColSpec("long", "seed", required=False),
                       ColSpec("long", "label", required=False),
                       ColSpec(Array("double"), "latents", required=False)]),
        outputs=Schema([TensorSpec(np.dtype("uint8"), (-1, height, width, channels))]),
        params=ParamSchema([ParamSpec("num_samples", "long", 64), ParamSpec("seed", "long", 0),
                            ParamSpec("label", "long", -1)]),
    )


def generator_input_example():
    """A request for 4 images with seed 0 (stored with the model, shown to serving users)."""
    import pandas as pd

    return pd.DataFrame({"num_samples": [4], "seed": [0]}, dtype="int64")


@timed("mlflow")
def log_generator(run_id: str, generator_file: str | Path, image_shape, uri: str) -> str:
    """Log ``generator.pt`` as a pyfunc model ("models from code", with the dgm package as
    its code); return its model URI."""
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pyfunc.log_model(
            name="generator",
            python_model=pyfunc_source(),
            artifacts={"generator": str(generator_file)},
            signature=generator_signature(image_shape),
            input_example=generator_input_example(),
            pip_requirements=_requirements(),
            code_paths=[str(Path(__file__).resolve().parents[1])],  # the dgm package
        )
    # Leaving the ``with`` block ends the run as FINISHED; the caller decides the final status.
    return info.model_uri


# What the pyfunc imports, pinned to this environment's versions; dgm itself travels with
# the model (``code_paths``), so the requirements resolve on any package index and
# ``mlflow models serve`` / ``build-docker`` work with their default environment managers.
SERVING_PACKAGES = ("torch", "numpy", "mlflow", "pydantic", "pyarrow")


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in SERVING_PACKAGES]


def _request_values(model_input: Any, params: dict | None, defaults: dict) -> dict:
    """Request values: params (MLflow fills in their defaults), then input columns.

    Values in the first input row win, because MLflow passes the declared param defaults
    even when a request gives none.
    """
    args = dict(defaults)
    if params:
        args.update({k: params[k] for k in args if params.get(k) is not None})
    if model_input is not None:
        if hasattr(model_input, "to_dict"):
            rows = model_input.to_dict(orient="records")
            row = rows[0] if rows else {}
        elif isinstance(model_input, dict):
            row = {k: (v[0] if isinstance(v, (list, tuple, np.ndarray)) else v)
                   for k, v in model_input.items()}
        else:
            row = {}
        args.update({k: row[k] for k in args if k in row and row[k] is not None})
    return args


def request_args(model_input: Any, params: dict | None) -> tuple[int, int]:
    """``(num_samples, seed)`` of a request (see :func:`_request_values`)."""
    args = _request_values(model_input, params, {"num_samples": 64, "seed": 0})
    num_samples, seed = int(args["num_samples"]), int(args["seed"])
    if not 0 < num_samples <= MAX_SAMPLES_PER_REQUEST:
        raise ValueError(f"num_samples must be in 1..{MAX_SAMPLES_PER_REQUEST}, got {num_samples}")
    return num_samples, seed


def request_label(model_input: Any, params: dict | None) -> int | None:
    """The class a request asks a conditional model for (None: −1 or not given)."""
    label = _request_values(model_input, params, {"label": -1})["label"]
    if label is None or (isinstance(label, float) and np.isnan(label)) or int(label) == -1:
        return None
    return int(label)


def request_latents(model_input: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Given latents, one row per image: ((N, D) float32, the rows' labels or None); (None,
    None) when the request has no ``latents`` column."""
    if not hasattr(model_input, "columns") or "latents" not in model_input.columns:
        return None, None
    rows = model_input["latents"].tolist()
    if not rows or any(r is None for r in rows):
        raise ValueError("latents: give one latent vector in every row")
    try:
        latents = np.asarray([np.asarray(r, dtype=np.float32) for r in rows])
    except ValueError:
        raise ValueError("latents: every row needs a vector of the same length") from None
    if latents.ndim != 2:
        raise ValueError("latents: every row needs a vector of the same length")
    labels = None
    if "label" in model_input.columns and model_input["label"].notna().all():
        labels = model_input["label"].to_numpy(dtype=np.int64)
        labels = None if (labels == -1).all() else labels
    return latents, labels


class LoadedGenerator:
    """A registered dgm generator pulled from MLflow: ``predict(num_samples, seed)``."""

    def __init__(self, pyfunc_model):
        self._pyfunc = pyfunc_model
        inner = pyfunc_model.unwrap_python_model()
        generator = getattr(inner, "generator", None)
        if generator is None or not hasattr(generator, "image_shape"):
            raise TypeError("not a dgm generator")
        self.image_shape = tuple(generator.image_shape)
        self.extra = dict(getattr(generator, "extra", {}) or {})
        self.num_classes = generator.num_classes if generator.conditional else None

    def check_label(self, label: int | None) -> None:
        """A one-line error unless ``label`` is None or a class of a conditional model."""
        from dgm.errors import DgmError

        if label is None:
            return
        if self.num_classes is None:
            raise DgmError(f"--label {label}: this generator is not conditional")
        if not 0 <= label < self.num_classes:
            raise DgmError(f"--label {label} is outside the classes 0..{self.num_classes - 1}")

    def predict(self, num_samples: int, seed: int, label: int | None = None) -> np.ndarray:
        import pandas as pd

        row = {"num_samples": [num_samples], "seed": [seed]}
        if label is not None:
            row["label"] = [label]
        return self._pyfunc.predict(pd.DataFrame(row, dtype="int64"))


CODE_LOADER = "mlflow.pyfunc.loaders.code_model"


def is_dgm_generator(flavors: dict) -> bool:
    """Whether an MLmodel's flavors are a dgm generator: our models-from-code file (no
    pickled Python object) with the ``generator`` weights (loaded ``weights_only``)."""
    pyfunc = flavors.get("python_function") or {}
    return (pyfunc.get("loader_module") == CODE_LOADER
            and Path(str(pyfunc.get("model_code_path", ""))).name == Path(pyfunc_source()).name
            and "generator" in (pyfunc.get("artifacts") or {}))


@timed("mlflow")
def load_generator_model(model_uri: str) -> LoadedGenerator:
    """Load ``model_uri`` (``models:/NAME@ALIAS``, ``runs:/…``, or a directory from
    :func:`download_generator`) as a dgm generator.

    Its MLmodel file is read first: anything but a dgm generator is refused before loading,
    so no pickled object from elsewhere is ever unpickled here."""
    from dgm.errors import DgmError
    from dgm.tracking.mlflow_runs import tracking_uri
    from dgm.tracking.registry import resolve_model_uri

    local = Path(model_uri).is_dir()  # shipped files: no MLflow store is touched
    if not local:
        mlflow.set_tracking_uri(tracking_uri())
        resolve_model_uri(model_uri)
    try:
        flavors = (mlflow.models.Model.load(model_uri) if local
                   else mlflow.models.get_model_info(model_uri)).flavors
    except Exception as exc:
        raise DgmError(f"cannot read {model_uri}: {str(exc).splitlines()[0]}") from None
    if not is_dgm_generator(flavors):
        raise DgmError(f"{model_uri} is not a dgm generator (refused before loading)")
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:
        raise DgmError(f"cannot load {model_uri}: {str(exc).splitlines()[0]}") from None
    try:
        return LoadedGenerator(model)
    except (TypeError, AttributeError):
        raise DgmError(f"{model_uri} is not a dgm generator") from None


@timed("mlflow")
def download_generator(model_uri: str, directory: Path) -> Path:
    """The files of the generator ``model_uri`` copied under ``directory`` (checked as
    :func:`load_generator_model` checks it): what Ray actors on nodes that cannot reach the
    MLflow store load, shipped to them."""
    from dgm.errors import DgmError
    from dgm.tracking.mlflow_runs import tracking_uri
    from dgm.tracking.registry import resolve_model_uri

    mlflow.set_tracking_uri(tracking_uri())
    resolve_model_uri(model_uri)
    try:
        if not is_dgm_generator(mlflow.models.get_model_info(model_uri).flavors):
            raise DgmError(f"{model_uri} is not a dgm generator (refused before loading)")
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                        dst_path=str(directory)))
    except DgmError:
        raise
    except Exception as exc:
        raise DgmError(f"cannot read {model_uri}: {str(exc).splitlines()[0]}") from None
