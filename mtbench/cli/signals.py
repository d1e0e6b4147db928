"""SIGTERM (``kill``, ``scancel``, a time limit, ``docker stop``) handled as Ctrl-C is.

Python dies on SIGTERM at once, silently, running no ``finally``. Inside :func:`sigterm_as_interrupt`
it raises :class:`Terminated`, a ``KeyboardInterrupt``: every cleanup and message written for Ctrl-C
(what was kept, how to resume) applies to it too.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread was."""


@contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises :class:`Terminated` (in the main thread; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_by(exc: BaseException) -> tuple[str, int]:
    """How an interruption came (``interrupted``, ``stopped by SIGTERM``) and its exit status (130, 143)."""
    if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
        return "stopped by SIGTERM", 128 + signal.SIGTERM
    return "interrupted", 128 + signal.SIGINT
