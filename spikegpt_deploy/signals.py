"""Termination signals as exceptions, so that cleanup code runs whatever ends a command.

By default SIGTERM (``kill``, ``timeout``, a service manager, a cancelled job) and SIGHUP (the
terminal went away) end Python at once: no ``finally``, no ``with`` exit, so a Lava run's
processes and shared-memory segments would outlive it. While ``termination_raises()`` is active
they raise ``Terminated`` instead, a ``KeyboardInterrupt`` subclass, so every path that cleans
up after Ctrl-C cleans up after them too. A signal the process ignores (``nohup`` ignores
SIGHUP) stays ignored, and a handler someone else installed is left alone.

``deferred_signals()`` holds SIGINT, SIGTERM and SIGHUP back during a cleanup that must not be
cut in half, and delivers them after it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

TERMINATING = (signal.SIGTERM, signal.SIGHUP)
DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; ``signum`` says which (a command exits with 128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


_received: list[int] = []   # the terminating signals this process has raised Terminated for


def _raise_terminated(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise Terminated(signum)


def interrupt_signum(exc: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: the Terminated's; else the last SIGTERM / SIGHUP
    this process turned into one (a library, e.g. Ray's ``get``, may catch the Terminated and
    raise a plain KeyboardInterrupt in its place); else SIGINT (Ctrl-C)."""
    signum = getattr(exc, "signum", None)
    if signum is None:
        signum = _received[-1] if _received else signal.SIGINT
    return int(signum)


def install_termination_handlers() -> list[int]:
    """For a command line's whole run: SIGTERM and SIGHUP raise ``Terminated`` where they have
    the default action. Returns the signals it took over (none outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    taken = []
    for signum in TERMINATING:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise_terminated)
            taken.append(signum)
    return taken


@contextlib.contextmanager
def termination_raises() -> Iterator[None]:
    """Inside: SIGTERM / SIGHUP with the default action raise ``Terminated``. On leaving with
    one of them, the old handlers come back and the signal is delivered again, so the process
    still ends by it as it would have, only after the cleanup inside has run."""
    taken = install_termination_handlers()
    try:
        yield
    except Terminated as exc:
        if exc.signum in taken:
            for signum in taken:
                signal.signal(signum, signal.SIG_DFL)
            taken = []
            os.kill(os.getpid(), exc.signum)  # the default action: the process ends here
        raise
    finally:
        for signum in taken:
            signal.signal(signum, signal.SIG_DFL)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back (main thread only: Python runs handlers there, so a
    cleanup in another thread cannot be interrupted anyway); deliver what arrived afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    old = {}
    for signum in DEFERRED:
        handler = signal.getsignal(signum)
        if handler not in (signal.SIG_IGN, None):
            old[signum] = handler
            signal.signal(signum, lambda s, f: arrived.append(s))
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)
