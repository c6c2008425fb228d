"""SIGTERM and Ctrl-C for the headless commands: stop cleanly, never leak work.

Python's default SIGTERM action ends the process at once: no ``finally``
block runs, so an external program started by the run keeps going and its
temporary folder stays. :func:`stop_signals_raise` turns SIGTERM (and SIGHUP)
into a :class:`Terminated` exception, a :class:`KeyboardInterrupt`, so the same
clean-up paths as Ctrl-C run (kill the child's process group, remove the
temporary folder, remove the half-written temporary file). The command then
prints one line (:func:`stop_message`) and exits with 128 + the signal number
(130 for Ctrl-C, 143 for SIGTERM), as shells do.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["Terminated", "stop_signals_raise", "stop_message", "exit_code"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM or SIGHUP arrives."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


@contextlib.contextmanager
def stop_signals_raise(signums=tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))):
    """Within the block, the given signals raise :class:`Terminated` (once; a repeated
    signal during the clean-up is ignored). Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise Terminated(signum)

    saved = {}
    for s in signums:
        try:
            saved[s] = signal.signal(s, handler)
        except (OSError, ValueError):
            pass
    try:
        yield
    finally:
        for s, old in saved.items():
            signal.signal(s, old)


def exit_code(exc: BaseException) -> int:
    """128 + the signal number that stopped us (130 for Ctrl-C)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def stop_message(exc: BaseException) -> str:
    """One line saying what stopped the command."""
    signum = int(getattr(exc, "signum", signal.SIGINT))
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    return f"diffgui: stopped by {name}; temporary files removed, nothing more written"
