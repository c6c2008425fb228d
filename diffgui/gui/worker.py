"""Running subtractions off the GUI thread: a QObject worker in a QThread, cancel, stale runs dropped.

The worker executes the run in a child process
(:func:`diffgui.app.isolated.execute_isolated`; in the worker's own thread
with ``isolate=False`` or ``DIFFGUI_RUN_IN_THREAD=1``), turning the engine's
``verbose`` lines into a Qt signal and passing a ``cancel`` callable backed by
a :class:`threading.Event`. A child process keeps the GUI responsive even where
the engine holds the GIL (``sep`` does, for about a second on 4096^2 images).
After the engine returns the worker also prepares the float32 display copies
and their uint8 renderings, so the GUI thread only hands ready arrays to the
image items.

Cancel sets the event (numpy methods stop at their next checkpoint, HOTPANTS
kills its process; a child that has not stopped 0.7 s later is killed with its
process group) and the controller forgets the run at once: the GUI is free
immediately even if the engine takes a moment to notice, and whatever the
abandoned thread returns later is dropped, exactly like the result of a run
replaced by a newer one.
"""

from __future__ import annotations

import os
import threading
import time

from PyQt6 import QtCore

from diffgui.app.display import DisplayImage
from diffgui.app.isolated import NotIsolatable, execute_isolated, warm_up
from diffgui.app.run import Run, describe_error
from diffgui.engine.errors import Cancelled

__all__ = ["RunWorker", "RunController"]


class RunWorker(QtCore.QObject):
    """Executes one Run on one Pair; lives in its own QThread."""

    log = QtCore.pyqtSignal(int, str)
    progress = QtCore.pyqtSignal(int, str, float)  # run_id, stage, fraction
    done = QtCore.pyqtSignal(int, object, object)  # run_id, Run, {role: DisplayImage}
    failed = QtCore.pyqtSignal(int, object, str)
    cancelled = QtCore.pyqtSignal(int, object)

    def __init__(self, run: Run, pair, event: threading.Event, levels=None, isolate: bool = True):
        super().__init__()
        self.isolate = isolate
        self.run_obj = run
        self.pair = pair
        self.event = event
        self.levels = levels

    @QtCore.pyqtSlot()
    def work(self) -> None:
        run = self.run_obj
        rid = run.run_id
        try:
            log = _Relay(self, rid)
            try:
                if not self.isolate:
                    raise NotIsolatable("isolation off")
                execute_isolated(run, self.pair, verbose=log, cancel=self.event.is_set)
            except NotIsolatable:
                run.execute(self.pair, verbose=log, cancel=self.event.is_set)
            if self.event.is_set():
                raise Cancelled("the run was cancelled")
            t0 = time.perf_counter()
            disp = {k: DisplayImage.from_array(v) for k, v in run.arrays().items()}
            if self.levels is not None:  # render to uint8 here, not in the GUI thread
                for role, d in disp.items():
                    d.quantize(self.levels(role, d))
            run.timings["display"] = time.perf_counter() - t0
            self.done.emit(rid, run, disp)
        except Cancelled:
            run.status = "cancelled"
            self.cancelled.emit(rid, run)
        except BaseException as exc:  # every failure becomes a message, never a crash of the GUI
            if run.status != "failed":
                run.status, run.error = "failed", describe_error(exc)
            self.failed.emit(rid, run, run.error or describe_error(exc))


class _Relay:
    """The engine's ``verbose``: lines become ``log`` signals, ``progress(stage, fraction)``
    (see :func:`diffgui.engine.errors.make_logger`) ``progress`` signals."""

    def __init__(self, worker, rid):
        self.worker, self.rid = worker, rid

    def __call__(self, line):
        self.worker.log.emit(self.rid, str(line))

    def progress(self, stage, fraction):
        self.worker.progress.emit(self.rid, str(stage), float(fraction))


class RunController(QtCore.QObject):
    """Starts runs, cancels them, and forwards only the current run's signals.

    Signals
    -------
    started(Run), log(str), progress(str, float), finished(Run, dict), failed(Run, str),
    cancelled(Run), busy(bool)
    """

    started = QtCore.pyqtSignal(object)
    log = QtCore.pyqtSignal(str)
    progress = QtCore.pyqtSignal(str, float)
    finished = QtCore.pyqtSignal(object, object)
    failed = QtCore.pyqtSignal(object, str)
    cancelled = QtCore.pyqtSignal(object)
    busy = QtCore.pyqtSignal(bool)

    def __init__(self, parent=None, isolate: bool | None = None):
        super().__init__(parent)
        if isolate is None:
            isolate = os.environ.get("DIFFGUI_RUN_IN_THREAD", "") in ("", "0")
        self.isolate = isolate
        if isolate:
            warm_up()  # the fork server imports the engine while the user picks a pair
        self.current: Run | None = None
        self._event: threading.Event | None = None
        self._threads: dict[int, tuple] = {}  # run_id -> (thread, worker, event): kept alive until done

    @property
    def running(self) -> bool:
        return self.current is not None

    def start(self, pair, method: str, params: dict, levels=None) -> Run:
        """Run ``method`` with ``params`` on ``pair`` in a new thread; a running run is cancelled.

        ``levels(role, DisplayImage) -> (lo, hi)``, when given, lets the worker also render
        the results to uint8 for those display levels.
        """
        if self.current is not None:
            self.cancel()
        run = Run(method=method, params=dict(params))
        event = threading.Event()
        thread = QtCore.QThread()
        thread.setObjectName(f"diffgui-run-{run.run_id}")
        worker = RunWorker(run, pair, event, levels, self.isolate)
        worker.moveToThread(thread)
        thread.started.connect(worker.work)
        worker.log.connect(self._on_log)
        worker.progress.connect(self._on_progress)
        worker.done.connect(self._on_done)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        for sig in (worker.done, worker.failed, worker.cancelled):
            sig.connect(thread.quit)
        thread.finished.connect(self._reap_finished)
        self._threads[run.run_id] = (thread, worker, event)
        self.current, self._event = run, event
        run.status = "running"
        thread.start()
        self.started.emit(run)
        self.busy.emit(True)
        return run

    def cancel(self) -> None:
        """Ask the current run to stop and forget it now (its late results are dropped)."""
        run, event = self.current, self._event
        if run is None:
            return
        event.set()
        self.current, self._event = None, None
        run.status = "cancelled"
        self.cancelled.emit(run)
        self.busy.emit(False)

    def _is_current(self, rid: int) -> bool:
        return self.current is not None and self.current.run_id == rid

    def _on_log(self, rid: int, line: str) -> None:
        if self._is_current(rid):
            self.log.emit(line)

    def _on_progress(self, rid: int, stage: str, fraction: float) -> None:
        if self._is_current(rid):
            self.progress.emit(stage, fraction)

    def _on_done(self, rid, run, disp) -> None:
        if self._is_current(rid):
            self.current = self._event = None
            self.busy.emit(False)
            self.finished.emit(run, disp)

    def _on_failed(self, rid, run, message) -> None:
        if self._is_current(rid):
            self.current = self._event = None
            self.busy.emit(False)
            self.failed.emit(run, message)

    def _on_cancelled(self, rid, run) -> None:
        if self._is_current(rid):
            self.current = self._event = None
            self.busy.emit(False)
            self.cancelled.emit(run)

    @QtCore.pyqtSlot()
    def _reap_finished(self) -> None:
        for rid, (thread, worker, _) in list(self._threads.items()):
            if thread.isFinished():
                del self._threads[rid]
                thread.deleteLater()
                worker.deleteLater()

    def shutdown(self, timeout_ms: int = 2000) -> None:
        """Cancel everything and wait a little for the threads (on window close)."""
        self.cancel()
        for thread, worker, event in list(self._threads.values()):
            event.set()
            thread.quit()
            thread.wait(timeout_ms)

    def active_threads(self) -> int:
        """Threads still alive (cancelled runs may linger until their engine notices)."""
        return sum(1 for t, _, _ in self._threads.values() if t.isRunning())
