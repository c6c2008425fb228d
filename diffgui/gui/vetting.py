"""Vetting and presets in the main window: the Candidates dock, its menu, and the Presets menu.

:func:`install_vetting` adds to a :class:`~diffgui.gui.main_window.MainWindow`:

- a "Candidates" dock with a :class:`~diffgui.gui.candidates_view.VettingView`; after
  every finished run the candidates are found in a child process (its stages, fraction
  and time left in the window's progress bar and status line) and shown with
  the labels already given on this pair (the label file is beside the science image,
  see :func:`diffgui.app.candidates.labels_path_for`);
- a Candidates menu: find again, unlabelled only, export CSV / DS9 regions, open a
  cutout collection, the vetting keys;
- a Presets menu: save and load presets (TOML) and "Copy as Python".
"""

from __future__ import annotations

import os
import threading

from PyQt6 import QtCore, QtWidgets

from diffgui.app import candidates as C
from diffgui.app import presets
from diffgui.app.progress import ProgressClock
from diffgui.engine.errors import Cancelled

from .candidates_view import VettingView
from .keys import shortcut
from .menus import add_action

__all__ = ["install_vetting", "VettingController"]


class _Relay:
    """The search's ``verbose``: its ``progress(stage, fraction)`` reports become the
    finder's ``progress(token, stage, fraction)`` signal (log lines are not shown)."""

    def __init__(self, finder, token: int):
        self.finder, self.token = finder, token

    def __call__(self, line) -> None:
        pass

    def progress(self, stage, fraction) -> None:
        self.finder.progress.emit(self.token, str(stage), float(fraction))


class _Finder(QtCore.QObject):
    """Runs candidate finding off the GUI process; emits ``done(token, CandidateSet)`` or ``failed``,
    and ``progress(token, stage, fraction)`` as the search goes through its stages.

    The search itself runs in a child process (:func:`C.candidates_for_run_isolated`):
    ``sep`` holds the GIL for most of a second on large images, which would freeze the
    event loop if it ran in a thread here. A Python thread only waits for the child
    (the wait releases the GIL). Setting the search's event kills its child.
    With ``isolate=False`` (or ``DIFFGUI_RUN_IN_THREAD=1``) the search runs in the thread.
    """

    done = QtCore.pyqtSignal(int, object)
    failed = QtCore.pyqtSignal(int, str)
    progress = QtCore.pyqtSignal(int, str, float)

    def __init__(self, parent=None, isolate: bool | None = None):
        super().__init__(parent)
        if isolate is None:
            isolate = os.environ.get("DIFFGUI_RUN_IN_THREAD", "") in ("", "0")
        self.isolate = isolate

    def start(self, token: int, run, pair, threshold: float, cancel: threading.Event) -> threading.Thread:
        def work():
            relay = _Relay(self, token)
            try:
                try:
                    if self.isolate:
                        # what the GUI thread needs next (CandidateSet.match), imported here
                        # rather than in the GUI thread: a first import of scipy.spatial takes 0.2 s
                        import scipy.spatial  # noqa: F401

                        cset = C.candidates_for_run_isolated(run, pair, threshold=threshold, cancel=cancel.is_set,
                                                             verbose=relay)
                    else:
                        cset = C.candidates_for_run(run, pair, threshold=threshold, cancel=cancel.is_set,
                                                    verbose=relay)
                except Cancelled:
                    return  # a newer search or pair replaced it
                except Exception as exc:  # shown in the log and the dock, never a crash
                    if not cancel.is_set():
                        self.failed.emit(token, str(exc))
                    return
                if not cancel.is_set():
                    self.done.emit(token, cset)
            except RuntimeError:  # the window was closed meanwhile: nobody to tell
                pass

        t = threading.Thread(target=work, name="diffgui-candidates", daemon=True)
        t.start()
        return t


class VettingController(QtCore.QObject):
    """Connects the window's pair and runs to the vetting view, label files and presets.

    Attributes
    ----------
    view : VettingView
    store : LabelStore or None
        Labels of the current pair (or collection).
    candidates : CandidateSet or None
    """

    candidatesReady = QtCore.pyqtSignal(object)

    def __init__(self, win, view: VettingView):
        super().__init__(win)
        self.win, self.view = win, view
        self.store = None
        self.candidates = None
        self.collection = None
        self._token = 0
        self._thread = None
        self._cancel = threading.Event()
        self.finder = _Finder(self)
        self.finder.done.connect(self._on_found)
        self.finder.failed.connect(self._on_find_failed)
        self.finder.progress.connect(self._on_progress)
        self.clock = None  # ProgressClock of the search in progress
        self._status_prefix = ""
        self._ticker = QtCore.QTimer(self)
        self._ticker.setInterval(250)
        self._ticker.timeout.connect(self._tick)
        win.pairLoaded.connect(self.on_pair)
        win.runFinished.connect(self.on_run)
        view.centerRequested.connect(self.center)
        view.findRequested.connect(self.find)
        view.exportRequested.connect(self.ask_export)
        view.openCollectionRequested.connect(self.ask_collection)

    # ---- pairs, runs, candidates ------------------------------------------------------
    def labels_path(self) -> str:
        return C.labels_path_for(self.win.pair)

    def searching(self) -> bool:
        """True while a candidate search is running."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Drop the search in progress (its child process is killed)."""
        self._token += 1
        self._cancel.set()
        if self.clock is not None:
            self._end_progress()

    def on_pair(self, pair) -> None:
        self.stop()
        self.candidates = None
        self.collection = None
        self.store = None
        self.view.clear(f"{pair.name}: run a subtraction (F5) to find candidates")

    def on_run(self, run) -> None:
        self.find(self.view.threshold.value(), run)

    def find(self, threshold: float = 5.0, run=None) -> bool:
        """Find candidates on the window's last run (in a child process); False when there is none."""
        run = run or self.win.run
        if run is None or self.win.pair is None:
            self.view.clear("run a subtraction first (F5)")
            return False
        self.stop()  # a newer run or threshold replaces the search in progress
        self._cancel = threading.Event()
        self.view.title.setText("<i>finding candidates…</i>")
        self._start_progress()
        self._thread = self.finder.start(self._token, run, self.win.pair, float(threshold), self._cancel)
        return True

    # ---- progress in the status bar (the window's bar, while no run needs it) -----------
    def _bar_is_ours(self) -> bool:
        ctl = getattr(self.win, "controller", None)
        return self.clock is not None and not (ctl is not None and ctl.running)

    def _status(self, text: str) -> None:
        """``text`` after what the status line said about the run (``'SFFT done in 1.2 s'``)."""
        self.win.status_label.setText(f"{self._status_prefix} · {text}" if self._status_prefix else text)

    def _start_progress(self) -> None:
        self.clock = ProgressClock("Candidates")
        self._status_prefix = self.win.status_label.text().split(" · ")[0]
        self._on_progress(self._token, C.SEARCH_STAGES[0], 0.0)
        self._ticker.start()

    def _on_progress(self, token: int, stage: str, fraction: float) -> None:
        """A stage's fraction from the search: the determinate bar, stage and time left."""
        if token != self._token or self.clock is None:
            return
        self.clock.update(stage, fraction)
        if self._bar_is_ours():
            bar = self.win.progress
            bar.setFormat(f"{stage} %p%")
            bar.setTextVisible(True)
            self._status(self.clock.text())
            bar.setRange(0, 1000)
            bar.setValue(int(round(1000 * self.clock.fraction)))
            bar.setVisible(True)

    def _tick(self) -> None:
        if self._bar_is_ours():
            self._status(self.clock.text())

    def _end_progress(self, text: str | None = None) -> None:
        """The search ended (found, failed or dropped): ``text`` on the status line, bar hidden."""
        if self._bar_is_ours():
            if text is not None:
                self._status(text)
            self.win.progress.setVisible(False)
        self._ticker.stop()
        self.clock = None

    def _on_found(self, token: int, cset) -> None:
        if token != self._token or self.win.pair is None:
            return  # a newer pair or run replaced it
        run = self.win.run
        phash = ""
        if run is not None:
            try:
                phash = presets.preset_hash(run.method, run.params)
            except Exception:  # a method without preset support (plug-in, test double)
                phash = ""
        cset.meta["preset_hash"] = phash
        try:
            store = C.LabelStore(self.labels_path(), preset_hash=phash)
        except Exception as exc:  # an unreadable label file must not hide the candidates
            self.win.show_error("Cannot read the label file", str(exc))
            store = C.LabelStore(self.labels_path() + ".new", preset_hash=phash)
        matched = store.attach(cset)
        if self.clock is not None:  # the search is over: 100 % while the table fills
            self._on_progress(token, self.clock.stage or C.SEARCH_STAGES[-1], 1.0)
        self.candidates, self.store, self.collection = cset, store, None
        m = cset.meta
        title = (f"{len(cset)} candidates on {'S_corr' if m['detection'] == 'scorr' else 'the difference'} "
                 f"above {m['threshold']:g}σ")
        self.view.set_source(cset, store, title)
        finished = self.clock.done_text() if self.clock is not None else None  # one reading: log = status
        self.win.append_log(f"{len(cset)} candidates ({matched} with labels from {store.path})"
                            + (f"; {finished}" if finished else ""))
        if finished:
            self._end_progress(finished)
        self.candidatesReady.emit(cset)

    def _on_find_failed(self, token: int, message: str) -> None:
        if token == self._token:
            self._end_progress("candidate search failed")
            self.view.clear(f"candidate finding failed: {message}")
            self.win.append_log(f"candidate finding failed: {message}")

    def center(self, x: float, y: float) -> None:
        """Centre every panel on a candidate; zoom in when the whole field is shown."""
        (x0, x1), _ = self.win.grid.master.viewRange()
        self.win.center_on(x, y, 40.0 if (x1 - x0) > 240 else None)

    # ---- collections ------------------------------------------------------------------
    def open_collection(self, path) -> bool:
        from diffgui.app.collections import collection_labels_path, open_collection

        try:
            coll = open_collection(path)
            store = C.LabelStore(collection_labels_path(path))
        except Exception as exc:
            self.win.show_error("Cannot open the collection", str(exc))
            return False
        self.stop()
        self.collection, self.store = coll, store
        score = f", score column {coll.score_column}" if coll.score_column else ""
        self.view.set_source(coll, store, f"{coll.title}: {len(coll)} cutouts{score}")
        self.win.append_log(f"opened collection {path} ({len(coll)} items, labels in {store.path})")
        self.show_dock()
        return True

    def ask_collection(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(
            self.win, "Open a cutout collection", "",
            "Cutout collections (*.npz *.fits *.fit *.fits.gz);;All files (*)")
        if path:
            self.open_collection(path)

    def ask_collection_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self.win, "Open a folder of FITS or npz cutouts")
        if path:
            self.open_collection(path)

    # ---- exports ----------------------------------------------------------------------
    def export(self, kind: str, path: str, overwrite: bool = False) -> str:
        """Write the shown items as ``'csv'`` or ``'regions'``; returns the path."""
        src = self.view.source
        if src is None:
            raise C.InputError("nothing to export: find candidates or open a collection first")
        phash = getattr(src, "meta", {}).get("preset_hash", "")
        if kind == "csv":
            return C.export_csv(path, src, self.store, preset_hash=phash, overwrite=overwrite)
        return C.export_regions(path, src, self.store, overwrite=overwrite)

    def ask_export(self, kind: str) -> None:
        if self.view.source is None:
            self.win.show_error("Nothing to export", "Find candidates or open a collection first.")
            return
        ext, filt = (".csv", "CSV (*.csv)") if kind == "csv" else (".reg", "DS9 regions (*.reg)")
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self.win, "Export candidates", "candidates" + ext, filt)
        if path:
            try:
                self.export(kind, path, overwrite=os.path.exists(path))
                self.win.append_log(f"exported to {path}")
            except Exception as exc:
                self.win.show_error("Cannot export", str(exc))

    # ---- presets ----------------------------------------------------------------------
    def save_preset(self, path: str, overwrite: bool = False):
        """Save the method and the form's values as a preset; returns the Preset."""
        method = self.win.current_method()
        pre = presets.save_preset(path, method, self.win.current_params(), overwrite=overwrite)
        self.win.append_log(f"preset saved to {path} (hash {pre.hash})")
        return pre

    def load_preset(self, path: str):
        """Select the preset's method and put its values into the form; returns the Preset."""
        pre = presets.load_preset(path)
        self.win.method_panel.set_method(pre.method)
        self.win.form.set_values(pre.params)
        self.win.append_log(f"preset {path} loaded ({pre.method}, hash {pre.hash})")
        return pre

    def python_call(self) -> str:
        return presets.as_python_call(self.win.current_method(), self.win.current_params())

    def copy_python(self) -> str:
        try:
            text = self.python_call()
        except Exception as exc:
            self.win.show_error("Cannot make the Python call", str(exc))
            return ""
        QtWidgets.QApplication.clipboard().setText(text)
        self.win.statusBar().showMessage("Python call copied to the clipboard", 4000)
        return text

    def ask_save_preset(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self.win, "Save preset", "preset.toml", "Presets (*.toml)")
        if path:
            try:
                self.save_preset(path, overwrite=os.path.exists(path))
            except Exception as exc:
                self.win.show_error("Cannot save the preset", str(exc))

    def ask_load_preset(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self.win, "Load preset", "", "Presets (*.toml);;All files (*)")
        if path:
            try:
                self.load_preset(path)
            except Exception as exc:
                self.win.show_error("Cannot load the preset", str(exc))

    def show_dock(self) -> None:
        dock = getattr(self.win, "vetting_dock", None)
        if dock is not None:
            dock.show()
            dock.raise_()


def _menu_before_help(win, title: str) -> QtWidgets.QMenu:
    mb = win.menuBar()
    menu = QtWidgets.QMenu(title, win)
    help_action = next((a for a in mb.actions() if a.text().replace("&", "") == "Help"), None)
    if help_action is not None:
        mb.insertMenu(help_action, menu)
    else:
        mb.addMenu(menu)
    return menu


def install_vetting(win) -> VettingController:
    """Add the Candidates dock and the Candidates and Presets menus to ``win``."""
    view = VettingView()
    view.setMinimumWidth(340)
    win.vetting_view = view
    win.vetting_dock = win.add_dock(view, "Candidates", QtCore.Qt.DockWidgetArea.RightDockWidgetArea,
                                    name="dock_candidates")
    ctrl = VettingController(win, view)
    win.vetting = ctrl

    cm = _menu_before_help(win, "&Candidates")
    add_action(win, cm, "&Find candidates", lambda: ctrl.find(view.threshold.value()), shortcut("find"),
         "Find candidates on the current result (S_corr or the matched-filter difference)")
    act = add_action(win, cm, "Show &unlabelled only", view.set_unlabelled_only, None,
               "Hide the candidates that already have a label", checkable=True)
    view.unlabelled.toggled.connect(lambda on: (act.blockSignals(True), act.setChecked(on), act.blockSignals(False)))
    cm.addSeparator()
    csv_act = add_action(win, cm, "Export &CSV…", lambda: ctrl.ask_export("csv"), None,
                         "x, y, RA, Dec, label, time, preset hash and every feature")
    reg_act = add_action(win, cm, "Export DS9 &regions…", lambda: ctrl.ask_export("regions"))
    for a in (csv_act, reg_act):
        a.setEnabled(False)  # nothing to export until candidates or a collection are shown
    view.exportsChanged.connect(lambda c, r: (csv_act.setEnabled(c), reg_act.setEnabled(r)))
    cm.addSeparator()
    add_action(win, cm, "Open cutout &collection…", ctrl.ask_collection, None,
         "Vet ready-made triplets: alert .npz files, a FITS cutout file")
    add_action(win, cm, "Open cutout &folder…", ctrl.ask_collection_folder, None,
         "Vet a folder of FITS cutouts (<id>_sci/_ref/_diff.fits or one file per triplet) or npz files")
    add_action(win, cm, "Vetting &keys", lambda: (ctrl.show_dock(), view.toggle_help(True)))

    pm = _menu_before_help(win, "&Presets")
    add_action(win, pm, "&Save preset…", ctrl.ask_save_preset, "Ctrl+Shift+S",
         "Save the method and every parameter as a TOML preset (for diffgui run --preset)")
    add_action(win, pm, "&Load preset…", ctrl.ask_load_preset, "Ctrl+Shift+O", "Load a TOML preset into the form")
    add_action(win, pm, "Copy as &Python", ctrl.copy_python, "Ctrl+Shift+C",
         "Put the equivalent run_zogy/run_sfft/run_hotpants call on the clipboard")
    return ctrl
