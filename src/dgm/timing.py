"""Where a stage's time goes: named phases summed in-process (``with phase("mlflow"):``) and,
when the ``DGM_PROFILE`` environment variable names a file at the stage's end, appended to it
as one JSON line (what ``benchmarks/quickstart_profile.py`` reads)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_seconds: dict[str, float] = {}
_depth: dict[str, int] = {}


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time to ``name`` (a nested block of the same name counts once)."""
    outermost = _depth.get(name, 0) == 0
    _depth[name] = _depth.get(name, 0) + 1
    started = time.perf_counter()
    try:
        yield
    finally:
        _depth[name] -= 1
        if outermost:
            add(name, time.perf_counter() - started)


def timed(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function is a :func:`phase` ``name``."""
    def decorate(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with phase(name):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


def add(name: str, seconds: float) -> None:
    """Add ``seconds`` to phase ``name`` (time measured elsewhere, e.g. on a Ray worker)."""
    _seconds[name] = _seconds.get(name, 0.0) + seconds


def phases() -> dict[str, float]:
    """The seconds per phase so far."""
    return dict(_seconds)


def process_start_ticks(pid: int | str = "self") -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``; None if it
    is gone or there is no ``/proc``)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere)."""
    started = process_start_ticks()
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return None if started is None else uptime - int(started) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def write_profile(stage: str, started_at_age: float | None, total_s: float) -> None:
    """Append ``{stage, startup_s, total_s, <phase>_s…}`` to ``$DGM_PROFILE`` if it is set
    (``startup_s``: interpreter start and imports, before the stage's own code ran)."""
    path = os.environ.get("DGM_PROFILE")
    if not path:
        return
    record = {"stage": stage, "startup_s": started_at_age, "total_s": total_s,
              **{f"{k}_s": v for k, v in sorted(_seconds.items())}}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
