"""Running a :class:`~diffgui.app.run.Run` in a child process (no Qt).

Why: parts of the engine hold Python's GIL for a long time (``sep`` extraction
on a 4096^2 image holds it for about a second), which would freeze a GUI that
runs the engine in a thread. A child process cannot block the GUI's
interpreter, and it can always be stopped: cancel first asks the engine to stop
at its next checkpoint (the ``cancel`` callable), and if it has not stopped
after ``grace`` seconds the child's whole process group (HOTPANTS included) is
killed.

Arrays travel through shared memory (one copy each way), log lines and other
results (kernels, headers) through a pipe. Children come from a fork server
that imports the engine once (:mod:`diffgui.app.preload`), so a run starts in
tens of milliseconds; :func:`warm_up` starts that server ahead of the first run.
:func:`call_isolated` runs any other module-level function (the candidate
search) the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing import shared_memory

import numpy as np

from diffgui.engine import errors as E

from . import methods as _methods

__all__ = ["execute_isolated", "call_isolated", "context", "warm_up", "NotIsolatable"]


class NotIsolatable(RuntimeError):
    """The method cannot be sent to a child process (e.g. a lambda registered as ``func``);
    callers fall back to running it in-process."""

_CTX = None
_ERRORS = {"InputError": E.InputError, "FitError": E.FitError, "ExecutableError": E.ExecutableError,
           "Cancelled": E.Cancelled, "ValueError": ValueError, "NotImplementedError": NotImplementedError,
           "MemoryError": MemoryError}



def _send_error(conn, exc) -> None:
    """Report an exception to the parent: engine errors by their own message,
    anything else described for a user."""
    from .run import describe_error

    name = type(exc).__name__
    try:
        conn.send(("error", name, str(exc) if name in _ERRORS else describe_error(exc)))
    except Exception:
        pass  # the parent is gone or the pipe is closed: nobody to tell


def context():
    """The multiprocessing context used for runs (fork server with the engine preloaded)."""
    global _CTX
    if _CTX is None:
        methods = mp.get_all_start_methods()
        _CTX = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if _CTX.get_start_method() == "forkserver":
            if os.environ.get("DIFFGUI_PRELOAD"):  # extra modules may live on our sys.path only
                os.environ["DIFFGUI_PRELOAD_PATH"] = os.pathsep.join(p for p in sys.path if p)
            _CTX.set_forkserver_preload(["diffgui.app.isolated", "diffgui.app.preload"])
    return _CTX


def warm_up() -> None:
    """Start the fork server now (it imports the engine in the background), so that the
    first run does not wait for it. Cheap, and harmless to call again."""
    ctx = context()
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    with _main_hidden():
        forkserver.ensure_running()


def _to_shm(arr: np.ndarray):
    arr = np.ascontiguousarray(arr)
    shm = shared_memory.SharedMemory(create=True, size=max(1, arr.nbytes))
    np.ndarray(arr.shape, arr.dtype, buffer=shm.buf)[...] = arr
    return shm, (shm.name, arr.shape, arr.dtype.str)


def _from_shm(desc, copy: bool = True):
    name, shape, dtype = desc
    shm = shared_memory.SharedMemory(name=name)
    view = np.ndarray(shape, np.dtype(dtype), buffer=shm.buf)
    out = np.array(view) if copy else view
    del view
    return shm, out


def _child(conn, cancel_event, method_info, method, params, inputs, describe, check_alignment=True):
    """Child process body: execute the run, send logs and results back."""
    _detach()
    from .run import Run

    shms = []
    try:
        if method_info is not None:
            _methods.register(method_info, replace=True)
        arrays = {}
        for key, desc in inputs.items():
            if desc is None:
                arrays[key] = None
            else:
                shm, arrays[key] = _from_shm(desc, copy=False)
                shms.append(shm)
        pair = _PairView(arrays, *describe)
        run = Run(method=method, params=params, check_alignment=check_alignment)
        run.execute(pair, verbose=_PipeLog(conn), cancel=cancel_event.is_set, score=False)
        out_desc, objects, made = {}, {}, []
        for key, val in run.results.items():
            if isinstance(val, np.ndarray) and val.ndim == 2:
                shm, out_desc[key] = _to_shm(val)
                made.append(shm)
            else:
                objects[key] = val
        try:
            conn.send(("done", run.to_dict(), out_desc, objects))
        except Exception as exc:  # an object that cannot be pickled: send the arrays anyway
            conn.send(("log", f"some results could not be passed back: {exc}"))
            conn.send(("done", run.to_dict(), out_desc, {}))
        conn.recv()  # wait until the parent has copied the arrays
        for shm in made:
            shm.close()
    except BaseException as exc:
        _send_error(conn, exc)
    finally:
        for shm in shms:
            try:
                shm.close()
            except BufferError:  # arrays still use it; the process exits anyway
                pass


def _detach() -> None:
    """A child's own process group (a kill reaches HOTPANTS too), and death with its parent:
    the fork server, which exits when diffgui does, even after a ``kill -9``."""
    try:
        os.setpgrp()
    except OSError:
        pass
    from diffgui.engine.common.process import die_with_parent

    die_with_parent()


class _PipeLog:
    """The child's ``verbose``: log lines and progress ``(stage, fraction)`` go to the parent."""

    def __init__(self, conn):
        self.conn = conn

    def __call__(self, line):
        self.conn.send(("log", line))

    def progress(self, stage, fraction):
        self.conn.send(("progress", str(stage), float(fraction)))


class _PairView:
    """What Run.execute needs from a Pair (arrays over shared memory, the headers, the
    description): the same attributes, so the run takes the same path as in-process."""

    def __init__(self, arrays, describe, image_header=None, template_header=None):
        self._arrays = arrays
        self._describe = describe
        self.image_header = image_header
        self.template_header = template_header

    def engine_inputs(self):
        return dict(self._arrays)

    def describe(self):
        return dict(self._describe)


def execute_isolated(run, pair, *, verbose=None, cancel=None, grace: float = 0.7, poll: float = 0.05):
    """Execute ``run`` on ``pair`` in a child process; same contract as ``Run.execute``.

    Parameters
    ----------
    run : Run
    pair : Pair
    verbose : callable, optional
        Receives each log line (called in the calling thread).
    cancel : callable, optional
        Polled every ``poll`` seconds; when True the child is asked to stop, and killed
        (with its process group) if it is still running ``grace`` seconds later.

    Returns
    -------
    Run
        ``run``, with results, timings, log, provenance and status filled in.
    """
    from .run import provenance

    ctx = context()
    ship = _shippable(run.method)
    made, inputs = [], {}
    t0 = time.perf_counter()
    try:
        for key, arr in pair.engine_inputs().items():
            if isinstance(arr, np.ndarray):
                shm, inputs[key] = _to_shm(arr)
                made.append(shm)
            else:
                inputs[key] = None
        parent, child = ctx.Pipe()
        event = ctx.Event()
        about = (pair.describe(), pair.image_header, pair.template_header)
        proc = ctx.Process(target=_child, args=(child, event, ship, run.method, dict(run.params), inputs,
                                                  about, run.check_alignment),
                           name=f"diffgui-run-{run.run_id}", daemon=True)
        run.status = "running"
        with _main_hidden():
            proc.start()
        child.close()
        _follow_child(run, proc, parent, event, verbose, cancel, grace, poll)
        proc.join(2.0)
        if run.status == "done":  # scored here, where the pair's star catalogue is cached
            run.score(pair)
        return run
    finally:
        for shm in made:
            shm.close()
            shm.unlink()
        if not run.provenance:
            run.provenance = {**provenance(), "pair": pair.describe(), "method": run.method}
        run.timings.setdefault("total", time.perf_counter() - t0)
        run.timings["wall_isolated"] = time.perf_counter() - t0


def _shippable(method):
    """The registry entry of ``method`` as sent to the child, or NotIsolatable."""
    info = _methods.get(method)
    # the child registers the method too (plug-ins, test doubles); it needs no specs or checks
    ship = dataclasses.replace(info, specs=None, extra_check=None)
    try:
        pickle.dumps(ship)
    except Exception as exc:
        raise NotIsolatable(f"{info.label} cannot run in a child process: {exc}") from None
    return ship


def _follow_child(run, proc, parent, event, verbose, cancel, grace, poll):
    """Relay the child's messages until its result is in ``run``; cancel, kill or raise its error."""
    cancel_at = None
    while True:
        if cancel is not None and cancel_at is None and cancel():
            event.set()
            cancel_at = time.perf_counter()
        if cancel_at is not None and time.perf_counter() - cancel_at > grace:
            _kill(proc)
            run.status, run.error = "cancelled", "the run was cancelled (stopped)"
            raise E.Cancelled("the run was cancelled")
        if parent.poll(poll):
            try:
                msg = parent.recv()
            except EOFError:
                msg = ("error", "RuntimeError", f"the subtraction process ended unexpectedly "
                                                f"(exit code {proc.exitcode})")
            if _take_message(msg, run, parent, verbose):
                return
        elif not proc.is_alive() and not parent.poll(0):
            run.status, run.error = "failed", f"the subtraction process died (exit code {proc.exitcode})"
            raise RuntimeError(run.error)


def _take_message(msg, run, parent, verbose) -> bool:
    """Handle one message of the child: True once the results are copied into ``run``."""
    if msg[0] == "progress":  # the engine's log.progress(stage, fraction)
        relay = getattr(verbose, "progress", None)
        if relay is not None:
            relay(msg[1], msg[2])
        return False
    if msg[0] == "log":
        run.log.append(msg[1])
        if verbose is not None:
            verbose(msg[1])
        return False
    if msg[0] == "done":
        _, d, out_desc, objects = msg
        results = dict(objects)
        for key, desc in out_desc.items():
            shm, results[key] = _from_shm(desc)
            shm.close()
            shm.unlink()
        parent.send("copied")
        run.results, run.status, run.error = results, d["status"], d["error"]
        run.timings.update(d["timings"])
        run.provenance = d["provenance"]
        run.log = list(d["log"])
        return True
    _, name, text = msg
    cls = _ERRORS.get(name, RuntimeError)
    run.status = "cancelled" if cls is E.Cancelled else "failed"
    run.error = text
    raise cls(text)


def _call_child(conn, func, inputs, kwargs, relay=False):
    """Child process body of :func:`call_isolated`."""
    _detach()
    shms = []
    try:
        arrays = {}
        for key, desc in inputs.items():
            shm, arrays[key] = _from_shm(desc, copy=False)
            shms.append(shm)
        if relay:  # the caller's verbose: lines and progress come back through the pipe
            kwargs = {**kwargs, "verbose": _PipeLog(conn)}
        conn.send(("done", func(**arrays, **kwargs)))
    except BaseException as exc:
        _send_error(conn, exc)
    finally:
        arrays = None
        for shm in shms:
            try:
                shm.close()
            except BufferError:
                pass


def call_isolated(func, arrays: dict, kwargs: dict | None = None, *, cancel=None, verbose=None,
                  poll: float = 0.05, name: str = "diffgui-call"):
    """``func(**arrays, **kwargs)`` in a child process; returns its (picklable) result.

    Parameters
    ----------
    func : callable
        A module-level function (it is sent by reference).
    arrays : dict
        Array arguments, passed through shared memory (None values are passed as None).
    kwargs : dict, optional
        Other arguments, pickled.
    cancel : callable, optional
        Polled every ``poll`` seconds; when True the child is killed at once and
        :class:`~diffgui.engine.errors.Cancelled` is raised (for work without side
        effects, such as a search).
    verbose : callable, optional
        When given, ``func`` receives a ``verbose=`` logger in the child whose lines reach
        ``verbose`` and whose ``progress(stage, fraction)`` reports reach
        ``verbose.progress`` (when it has one), called in the calling thread.

    Raises
    ------
    NotIsolatable
        ``func`` or ``kwargs`` cannot be sent to a child.
    """
    kwargs = dict(kwargs or {})
    try:
        pickle.dumps((func, kwargs))
    except Exception as exc:
        raise NotIsolatable(f"cannot be sent to a child process: {exc}") from None
    ctx = context()
    made, inputs = [], {}
    proc = None
    try:
        for key, arr in arrays.items():
            if arr is None:
                kwargs[key] = None
                continue
            shm, inputs[key] = _to_shm(np.asarray(arr))
            made.append(shm)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_call_child, args=(child, func, inputs, kwargs, verbose is not None),
                           name=name, daemon=True)
        with _main_hidden():
            proc.start()
        child.close()
        while True:
            if cancel is not None and cancel():
                _kill(proc)
                raise E.Cancelled("cancelled")
            if parent.poll(poll):
                try:
                    msg = parent.recv()
                except EOFError:
                    raise RuntimeError(f"the child process ended unexpectedly (exit code {proc.exitcode})") from None
                if msg[0] == "done":
                    proc.join(2.0)
                    return msg[1]
                if msg[0] in ("log", "progress"):
                    _relay(msg, verbose)
                    continue
                _, ename, text = msg
                raise _ERRORS.get(ename, RuntimeError)(text)
            if not proc.is_alive() and not parent.poll(0):
                raise RuntimeError(f"the child process died (exit code {proc.exitcode})")
    finally:
        if proc is not None and proc.is_alive():  # cancelled, failed, or did not exit after answering
            _kill(proc)
        for shm in made:
            shm.close()
            shm.unlink()


def _relay(msg, verbose) -> None:
    """A log line or progress report of a :func:`call_isolated` child, to ``verbose``."""
    if verbose is None:
        return
    if msg[0] == "log":
        verbose(msg[1])
        return
    relay = getattr(verbose, "progress", None)
    if relay is not None:
        relay(msg[1], msg[2])


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_hidden():
    """Keep the child from re-importing the ``__main__`` script.

    multiprocessing re-runs the main script in every child it starts with
    spawn/forkserver; a script that opens the window without an
    ``if __name__ == "__main__":`` guard would then start a second GUI in the child.
    The child needs nothing from ``__main__``, so its path is hidden while starting.
    """
    main = sys.modules.get("__main__")
    with _MAIN_LOCK:
        saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
        try:
            if main is not None:
                main.__dict__.pop("__file__", None)
                if "__spec__" in saved:
                    main.__spec__ = None
            yield
        finally:
            if main is not None:
                main.__dict__.update(saved)


def _kill(proc) -> None:
    """Kill the child and everything it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, ProcessLookupError, AttributeError):
        proc.kill()
    proc.join(1.0)
