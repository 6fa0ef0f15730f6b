"""Project paths and atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
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


def home_root(root: Path) -> Path:
    """Where the project at ``root`` keeps what outlives a run (the default MLflow store, Ray
    results): ``root`` itself, or — when ``root`` is the temporary copy DVC runs an
    experiment in (``dvc exp run --temp``, ``--queue``: under ``.dvc/tmp``) — the repository
    the experiment belongs to, which DVC names in ``DVC_ROOT``."""
    parent = os.environ.get("DVC_ROOT")
    if parent and Path(root).resolve().is_relative_to(Path(parent).resolve() / ".dvc" / "tmp"):
        return Path(parent).resolve()
    return Path(root)


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


def _cannot_write(final: Path, exc: OSError) -> DgmError:
    blocking = next((p for p in final.parents if p.exists() and not p.is_dir()), None)
    reason = f"{blocking} is not a directory" if blocking else exc.strerror or str(exc)
    return DgmError(f"cannot write {final}: {reason}")


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
        raise _cannot_write(final, exc) from None
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


@contextlib.contextmanager
def sole_writer(final: str | os.PathLike) -> Iterator[None]:
    """Hold ``final`` for this process while the block writes it (and what goes with it):
    a second writer of the same path, on this host or one sharing the disk, gets a
    one-line :class:`DgmError` at once instead of mixing its files with the first one's.

    An advisory ``flock`` on ``.<name>.lock`` beside ``final``: the kernel releases it when
    the holder dies, however it dies; the file goes when the block ends.
    """
    final = Path(final)
    lock = final.parent / f".{final.name}.lock"
    missing = [p for p in final.parents if not p.exists()]  # made here, removed if left empty
    while True:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock, "a")  # noqa: SIM115 - held open for the whole block
        except OSError as exc:
            raise _cannot_write(final, exc) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DgmError(f"{final} is being written by another process; wait for it to "
                           "finish or choose another output") from None
        try:  # the file locked must still be the one at ``lock``, not one a finishing
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino  # holder removed
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # before the unlock: a newcomer never locks a removed file
        handle.close()
        for directory in missing:  # innermost first
            with contextlib.suppress(OSError):
                directory.rmdir()
