"""Running the executable: argument list (never a shell), output streamed to the
log, killed on cancel or timeout."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from diffgui.engine.common.process import child_preexec
from diffgui.engine.errors import Cancelled, ExecutableError

# ---- running the executable ----------------------------------------------------------------

@dataclass
class ProcessResult:
    """Exit status and output of one executable run."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        try:
            proc.kill()
        except OSError:
            pass


def run_process(argv, cwd=None, *, log=None, cancel=None, timeout=None,
                poll: float = 0.05) -> ProcessResult:
    """Run ``argv`` (no shell), streaming each output line to ``log``.

    Parameters
    ----------
    argv : list of str
    cwd : str, optional
    log : callable, optional
        Receives every stdout/stderr line as it arrives.
    cancel : callable, optional
        Polled every ``poll`` seconds; returning True kills the process
        (and its children) and raises :class:`Cancelled`.
    timeout : float, optional
        Seconds; the process is killed and :class:`ExecutableError` raised
        when it runs longer.

    Returns
    -------
    ProcessResult
    """
    log = log or (lambda *a: None)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen([os.fspath(a) for a in argv], cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", bufsize=1, start_new_session=True,
                                preexec_fn=child_preexec())  # dies with us, even on kill -9 (Linux)
    except FileNotFoundError:
        raise ExecutableError(f"cannot run {argv[0]!r}: no such file") from None
    except PermissionError:
        raise ExecutableError(f"cannot run {argv[0]!r}: permission denied") from None
    except OSError as exc:
        raise ExecutableError(f"cannot run {argv[0]!r}: {exc}") from None
    lines: "queue.Queue" = queue.Queue()
    chunks = {"out": [], "err": []}

    def reader(stream, key):
        for line in iter(stream.readline, ""):
            chunks[key].append(line)
            lines.put(line.rstrip("\n"))
        stream.close()

    threads = [threading.Thread(target=reader, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=reader, args=(proc.stderr, "err"), daemon=True)]
    for t in threads:
        t.start()

    def drain():
        while True:
            try:
                log(lines.get_nowait())
            except queue.Empty:
                return

    try:
        while True:
            try:
                proc.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pass
            drain()
            if cancel is not None and cancel():
                _kill(proc)
                proc.wait()
                raise Cancelled("HOTPANTS was stopped (cancelled)")
            if timeout is not None and time.monotonic() - t0 > timeout:
                _kill(proc)
                proc.wait()
                raise ExecutableError(f"HOTPANTS did not finish within {timeout:g} s and was "
                                      "stopped; raise the timeout or use fewer stamps/regions.")
    except BaseException:
        _kill(proc)
        raise
    for t in threads:
        t.join(timeout=5)
    drain()
    # Children that inherited the pipes are not waited for; make sure none survive.
    _kill(proc)
    return ProcessResult(proc.returncode, "".join(chunks["out"]), "".join(chunks["err"]),
                         time.monotonic() - t0)

