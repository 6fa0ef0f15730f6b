"""How a stage is entered, from ``dgm`` or from its DVC script: user errors become one line
on stderr and exit status 2; noisy libraries are quietened first."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from dgm.errors import DgmError
from dgm.signals import Terminated, raise_on_sigterm

PARAMS_FILE = "configs/params.yaml"


def fail(message: str, code: int = 2) -> None:
    """Print ``dgm: error: message`` on stderr and exit with ``code``."""
    print(f"dgm: error: {message}", file=sys.stderr)
    sys.exit(code)


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; turn user errors into one line on stderr and exit status 2, Ctrl-C into
    "interrupted" (130) and SIGTERM into "terminated" (143), each after cleaning up."""
    raise_on_sigterm()
    try:
        return fn(*args, **kwargs)
    except DgmError as exc:
        fail(str(exc))
    except Terminated:
        fail("terminated", 128 + signal.SIGTERM)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def quiet_libraries() -> None:
    """No INFO chatter from MLflow, and no artifact progress bars on stderr (noise before a
    result and, on an error, a second line beside the one-line message)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # what mlflow reads when it is imported (here or in a Ray worker): e.g. no "Creating
    # initial MLflow database tables" on a new SQLite store
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_stage(run: Callable[..., Any], *args: str, params: str = PARAMS_FILE) -> None:
    """Entry of a DVC stage script: ``run(load_params(params), *args)``, guarded."""
    from dgm import timing
    from dgm.config import load_params

    started_at_age, started = timing.process_age(), time.perf_counter()
    quiet_libraries()
    stage = "@".join([run.__module__.rsplit(".", 1)[-1], *args])
    try:
        guarded(lambda: run(load_params(params), *args))
    finally:
        timing.write_profile(stage, started_at_age, time.perf_counter() - started)
