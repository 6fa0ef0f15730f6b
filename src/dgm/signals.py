"""Ctrl-C and SIGTERM as exceptions in the main thread, whatever Ray installs: a stage
catches them, closes what it opened (its MLflow run as KILLED, its temporary outputs) and
exits 130 / 143."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that ``finally`` blocks (temporary outputs)
    run as on Ctrl-C."""


_received: list[int] = []  # SIGTERMs seen (a library may re-wrap the exception)


def _terminate(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise Terminated()


def was_terminated() -> bool:
    """Whether this process received SIGTERM (through :func:`raise_on_sigterm`)."""
    return bool(_received)


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def raise_on_sigterm() -> None:
    """SIGTERM raises :class:`Terminated` (in the main thread, unless someone else already
    handles SIGTERM). A mask inherited from the parent (one that spawned this process while
    it blocked SIGINT/SIGTERM, as multiprocessing's resource tracker does) is lifted, or the
    signal would wait forever."""
    if in_main_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """Restore this process's SIGINT and SIGTERM handlers after the block (``ray.init``
    turns SIGTERM into ``sys.exit(15)``, which skips a stage's own clean-up)."""
    if not in_main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if callable(handler):
                signal.signal(sig, handler)


def run_interruptibly(fn: Callable[[], T], name: str) -> T:
    """``fn()`` in a daemon thread while the main thread waits, so that Ctrl-C and SIGTERM
    reach the caller as ``KeyboardInterrupt`` / :class:`Terminated` however ``fn`` blocks
    (Ray Train's ``fit`` installs its own SIGINT handler only in the main thread, and that
    one turns Ctrl-C into ``sys.exit``). The abandoned call ends with the process, whose
    exit shuts Ray down."""
    if not in_main_thread():
        return fn()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
