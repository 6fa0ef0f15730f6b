"""Project paths and atomic writes."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dgm.errors import DgmError

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def plain_name(value: str, what: str) -> str:
    """``value`` if it is safe as one path component (letters, digits, ``.``, ``_``, ``-``;
    not starting with a dot, so never ``..``), else a one-line :class:`DgmError`: every name
    a user gives that becomes a path (dataset, model, run) goes through here."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value):
        raise DgmError(f"{what} {value!r} is not a plain name (letters, digits, '.', '_', "
                       "'-'; at most 100, not starting with '.')")
    return value


def project_root(start: Path | None = None) -> Path:
    """The nearest ancestor of ``start`` (default: cwd) holding ``dvc.yaml``, else ``start``."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def _temporary_prefix(final: Path) -> str:
    return f".{final.name}.{socket.gethostname()}."


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove what killed writers of ``final`` left beside it: temporaries of
    :func:`atomic_path` made on this host by a process that no longer runs (a live
    writer's, or another host's on a shared disk, are left alone)."""
    prefix = _temporary_prefix(final)
    removed = []
    for candidate in final.parent.glob(f"{glob.escape(prefix)}*"):
        pid = candidate.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``final`` only if the block succeeds.

    Works for files and directories: whatever the block creates at the yielded path
    replaces ``final`` in one rename, so readers never see a half-written output.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"{_temporary_prefix(final)}{os.getpid()}.",
                                        dir=final.parent))
    except OSError as exc:  # a parent that is a file, read-only, a pseudo-filesystem …
        blocking = next((p for p in final.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocking} is not a directory" if blocking else exc.strerror or str(exc)
        raise DgmError(f"cannot write {final}: {reason}") from None
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists() and not tmp.is_symlink():
            raise FileNotFoundError(f"nothing was written for {final}")
        try:
            if final.is_dir() and not final.is_symlink():
                os.replace(final, tmp_dir / ".previous")  # one rename puts the new one in place
            os.replace(tmp, final)
        except OSError as exc:
            raise DgmError(f"cannot replace {final}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
