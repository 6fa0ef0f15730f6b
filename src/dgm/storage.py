"""Where Ray Train, Ray Tune and generation keep what every node must see: the ``cluster``
section of the params (``cluster.storage``) and storage locations through pyarrow's
filesystems (``s3://``, ``gs://``, ``file://`` or a path every node mounts).

S3 endpoints and credentials come from the standard AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), read by pyarrow (and by Ray, which uses it).
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import field_validator

from dgm.errors import DgmError
from dgm.section import Section


class ClusterConfig(Section):
    """The ``cluster`` section: what a multi-node Ray cluster needs from the project."""

    # null: local (``artifacts/ray_results``; a one-machine Ray). Else a URI (s3://bucket/dgm,
    # gs://…, file:///mnt/shared) or a path every node mounts: Ray Train checkpoints and Ray
    # Tune trial state go there.
    storage: str | None = None

    @field_validator("storage")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("cluster.storage is blank: null (local) or a URI or path")
        return value


def is_uri(location: str) -> bool:
    return "://" in location


def storage_location(location: str | Path, root: Path | None = None) -> str:
    """A URI as given (``file://`` made a plain path); a path made absolute (against
    ``root`` when relative): what Ray's ``storage_path`` wants."""
    text = str(location)
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    if is_uri(text):
        return text.rstrip("/")
    path = Path(text)
    return str(path if path.is_absolute() else ((root or Path.cwd()) / path).resolve())


def join(location: str, *parts: str) -> str:
    """``location/part/...`` for URIs and paths alike."""
    return "/".join([location.rstrip("/"), *parts])


def filesystem(location: str):
    """(pyarrow filesystem, path inside it) of ``location``; one line when it cannot be
    opened (unknown scheme, missing credentials)."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), location
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
        raise DgmError(f"cannot open storage {location}: {str(exc).splitlines()[0]}") from None


def list_dirs(location: str) -> list[tuple[str, float]]:
    """(name, modification time) of each directory directly under ``location``; [] when
    ``location`` does not exist. Object stores give no directory times: then 0."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise DgmError(f"cannot list storage {location}: {str(exc).splitlines()[0]}") from None
    return [(info.base_name, info.mtime.timestamp() if info.mtime else 0.0)
            for info in infos if info.type == pafs.FileType.Directory]


def latest_run_name(storage: str, prefix: str) -> str | None:
    """The newest Ray Train run under ``storage`` (a path or URI) whose name starts with
    ``prefix`` (by modification time, then name: names end in a timestamp, and object
    stores have no directory times)."""
    runs = [(mtime, name) for name, mtime in list_dirs(storage) if name.startswith(prefix)]
    return max(runs)[1] if runs else None


def run_to_resume(storage: str, prefix: str, run_name: str | None) -> str:
    """The Ray Train run ``--resume`` continues: ``run_name`` if it ran under ``storage``,
    else the newest ``prefix*`` run (:func:`latest_run_name`); one line when there is none."""
    if run_name is not None:
        if run_name not in {name for name, _ in list_dirs(storage)}:
            raise DgmError(f"--resume: no run {run_name} under {storage} (a new run: leave "
                           "out --resume)")
        return run_name
    latest = latest_run_name(storage, prefix)
    if latest is None:
        raise DgmError(f"--resume: no earlier run {prefix}* under {storage}")
    return latest


def timestamp() -> str:
    """UTC ``YYYYmmdd-HHMMSS``: the suffix of run and study names."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())
