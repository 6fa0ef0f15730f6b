"""Ctrl-C and SIGTERM reach a stage as exceptions in the main thread."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from dgm.signals import Terminated, keep_signal_handlers, run_interruptibly


def test_handlers_survive_a_library_that_replaces_them():
    def mine(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with keep_signal_handlers():
            signal.signal(signal.SIGTERM, lambda *_: None)  # what ray.init does
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_blocked_call_returns_its_value_or_raises_its_error():
    assert run_interruptibly(lambda: 42, "t") == 42
    with pytest.raises(ZeroDivisionError):
        run_interruptibly(lambda: 1 / 0, "t")


def test_ctrl_c_interrupts_the_wait_even_when_the_call_never_returns():
    blocked = threading.Event()
    # Python's own Ctrl-C handler (a pytest-xdist worker ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):  # a wait without handlers, like Ray's get
            run_interruptibly(lambda: blocked.wait(60), "blocked")
        assert time.monotonic() - started < 5
    finally:
        signal.signal(signal.SIGINT, previous)
        blocked.set()
