"""Series tools in the window: align a misaligned pair, batch dialog, light-curve plot.

``install_series(win)`` adds a *Series* menu:

* **Align science to template** registers the science image onto the template grid
  (:func:`diffgui.app.align.align_pair`); offered in the status bar when the alignment
  check finds an offset (:func:`offer_align`).
* **Batch...** opens :class:`BatchDialog`: frames, template, method, preset, start,
  progress, cancel, and a table of results (double-click opens one).
* **Light curve at the crosshair...** asks for a batch folder and plots forced PSF
  photometry at the last crosshair position (:class:`LightCurveWindow`); clicking a point
  opens that pair with its results.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

__all__ = ["install_series", "offer_align", "align_current", "open_result", "BatchDialog", "LightCurveWindow",
           "render_light_curves"]


def install_series(win) -> None:
    """Add the Series menu to ``win`` and follow its crosshair."""
    from .menus import add_action

    menu = win.menuBar().addMenu("&Series")
    win.series_align_action = add_action(win, menu, "&Align science to template", lambda: align_current(win),
                                         tip="Register the science image onto the template's grid "
                                             "(star matching, Lanczos-3)")
    add_action(win, menu, "&Batch...", lambda: BatchDialog(win).show(),
               tip="Subtract one template from many frames")
    add_action(win, menu, "&Light curve at the crosshair...", lambda: ask_light_curve(win),
               tip="Forced PSF photometry at the crosshair over a batch's results")
    win.series_cursor = None
    win.grid.cursorMoved.connect(lambda x, y: setattr(win, "series_cursor", (x, y)))


def offer_align(win, message: str) -> None:
    """Status-bar button offering registration (called when the alignment check fails)."""
    old = getattr(win, "_align_button", None)
    if old is not None:
        win.statusBar().removeWidget(old)
        old.deleteLater()
    btn = QtWidgets.QPushButton("Align science to template")
    btn.setToolTip(message)
    btn.clicked.connect(lambda: align_current(win))
    win.statusBar().addPermanentWidget(btn)
    win._align_button = btn


def align_current(win) -> bool:
    """Register the open pair's science image onto its template; returns success."""
    from diffgui.app.align import align_pair

    if win.pair is None:
        return False
    QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
    try:
        new, tr = align_pair(win.pair)
    except Exception as exc:
        QtWidgets.QApplication.restoreOverrideCursor()
        win.show_error("Cannot align the pair", str(exc))
        return False
    QtWidgets.QApplication.restoreOverrideCursor()
    btn = getattr(win, "_align_button", None)
    if btn is not None:
        win.statusBar().removeWidget(btn)
        btn.deleteLater()
        win._align_button = None
    win.set_pair(new)
    win.append_log(f"aligned: shift ({tr.offset[0]:.3f}, {tr.offset[1]:.3f}) px, rotation {tr.rotation:.4f} deg, "
                   f"scale {tr.scale:.5f}, {tr.n_stars} stars, rms {tr.rms:.3f} px ({tr.method})")
    return True


def open_result(win, path: str) -> bool:
    """Open the pair of a batch results file (registered again when it was) and show its results."""
    from diffgui.app.display import DisplayImage
    from diffgui.app.pair import load_pair
    from diffgui.app.results_io import load_run

    try:
        run = load_run(path)
        pair_info = (run.provenance or {}).get("pair") or {}
        sci, tmpl = pair_info.get("image_path"), pair_info.get("template_path")
        if not sci or not tmpl:
            raise ValueError(f"{path} does not name its science image and template")
        reg = (run.provenance or {}).get("registration")
        if reg:
            from diffgui.engine.common.registration import Transform

            tr = Transform(np.array(reg["matrix"]), np.array(reg["offset"]), reg.get("method", "given"))
            from diffgui.app.align import align_pair

            pair, _ = align_pair(load_pair_unchecked(sci, tmpl), transform=tr)
        else:
            pair = load_pair(sci, tmpl)
    except Exception as exc:
        win.show_error("Cannot open the result", str(exc))
        return False
    win.set_pair(pair)
    levels = win.grid.levels_function()
    disp = {}
    for k, v in run.arrays().items():
        d = DisplayImage.from_array(v)
        d.quantize(levels(k, d))
        disp[k] = d
    win._on_run_finished(run, disp)
    win.append_log(f"opened {path}")
    return True


def load_pair_unchecked(sci, tmpl):
    """A pair of same-shape files without registration (the transform is applied afterwards)."""
    from diffgui.app.pair import load_pair

    return load_pair(sci, tmpl)


def ask_light_curve(win) -> None:
    if win.series_cursor is None:
        win.show_error("Light curve", "Move the crosshair to the source first (click in a panel).")
        return
    folder = QtWidgets.QFileDialog.getExistingDirectory(win, "Batch results folder")
    if folder:
        LightCurveWindow.for_folder(win, folder, *win.series_cursor).show()


class LightCurveWindow(QtWidgets.QWidget):
    """Flux with error bars against time; clicking a point opens that pair."""

    def __init__(self, win, table, title="light curve", parent=None):
        super().__init__(parent, QtCore.Qt.WindowType.Window)
        self.win, self.table = win, table
        self.setWindowTitle(title)
        lay = QtWidgets.QVBoxLayout(self)
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "time")
        self.plot.setLabel("left", "difference flux (template scale)")
        lay.addWidget(self.plot)
        self.info = QtWidgets.QLabel("click a point to open that pair")
        lay.addWidget(self.info)
        t, f, e = (np.asarray(table[c], float) for c in ("time", "flux", "flux_err"))
        ok = np.isfinite(t) & np.isfinite(f)
        self.t0 = float(np.floor(np.nanmin(t[ok]))) if ok.any() else 0.0
        self.plot.setLabel("bottom", f"time - {self.t0:g}")
        self.errors = pg.ErrorBarItem(x=t[ok] - self.t0, y=f[ok], height=2 * np.nan_to_num(e[ok]), beam=0)
        self.plot.addItem(self.errors)
        self.points = pg.ScatterPlotItem(x=t[ok] - self.t0, y=f[ok], size=6, data=np.nonzero(ok)[0],
                                         brush=pg.mkBrush(80, 160, 255))
        self.points.sigClicked.connect(self._clicked)
        self.plot.addItem(self.points)
        self.resize(800, 450)

    @classmethod
    def for_folder(cls, win, folder, x, y):
        from diffgui.app import lightcurve

        table = lightcurve.light_curve(lightcurve.result_files(folder), x, y)
        return cls(win, table, f"light curve at ({x:.1f}, {y:.1f}) - {os.path.basename(folder)}")

    def _clicked(self, item, points, *args):
        if not len(points):
            return
        i = int(points[0].data())
        path = str(self.table["file"][i])
        self.info.setText(f"opening {os.path.basename(path)}")
        if self.win is not None:
            open_result(self.win, path)


def render_light_curves(tables, labels, path, size=(900, 700)):
    """Save stacked light-curve plots (one per table) as a PNG with pyqtgraph."""
    from pyqtgraph.exporters import ImageExporter

    lay = pg.GraphicsLayoutWidget()
    lay.resize(*size)
    lay.setBackground("w")
    for n, (table, label) in enumerate(zip(tables, labels)):
        t, f, e = (np.asarray(table[c], float) for c in ("time", "flux", "flux_err"))
        ok = np.isfinite(t) & np.isfinite(f)
        p = lay.addPlot(row=n, col=0, title=label)
        p.addItem(pg.ErrorBarItem(x=t[ok] - 2456000, y=f[ok], height=2 * np.nan_to_num(e[ok]), beam=0,
                                  pen=pg.mkPen(120, 120, 120)))
        p.plot(t[ok] - 2456000, f[ok], pen=None, symbol="o", symbolSize=4, symbolBrush=pg.mkBrush(30, 90, 200))
        if "model" in table.colnames:
            o = np.argsort(t[ok])
            p.plot(t[ok][o] - 2456000, np.asarray(table["model"], float)[ok][o], pen=pg.mkPen("r", width=1.5))
        p.setLabel("bottom", "HJD - 2456000")
        p.setLabel("left", "flux (template scale)")
    lay.show()  # lay the plots out at the requested size before exporting
    QtWidgets.QApplication.processEvents()
    ImageExporter(lay.scene()).export(path)
    lay.close()
    return path


class _BatchThread(QtCore.QThread):
    progressed = QtCore.pyqtSignal(int, int, object)
    finishedWith = QtCore.pyqtSignal(object)

    def __init__(self, jobs, method, params, workers, align):
        super().__init__()
        self.jobs, self.method, self.params, self.workers, self.align = jobs, method, params, workers, align
        self.stop = threading.Event()

    def run(self):
        from diffgui.app import batch

        try:
            res = batch.run_batch(self.jobs, self.method, self.params, backend="local", workers=self.workers,
                                  align=self.align, resume=True, cancel=self.stop.is_set,
                                  progress=lambda d, t, r: self.progressed.emit(d, t, r))
        except Exception as exc:  # reported in the dialog
            res = exc
        self.finishedWith.emit(res)


class BatchDialog(QtWidgets.QDialog):
    """Pick frames and a template, a method and a preset; start, watch, cancel, open results."""

    def __init__(self, win, parent=None):
        super().__init__(parent or win)
        self.win, self.thread, self.results = win, None, []
        self.setWindowTitle("Batch subtraction")
        form = QtWidgets.QFormLayout()
        self.frames = QtWidgets.QListWidget()
        add = QtWidgets.QPushButton("Add frames...")
        add.clicked.connect(self._add_frames)
        box = QtWidgets.QVBoxLayout()
        box.addWidget(self.frames)
        box.addWidget(add)
        form.addRow("Frames", box)
        self.template = QtWidgets.QLineEdit()
        form.addRow("Template", self._with_browse(self.template, self._pick_template))
        self.method = QtWidgets.QComboBox()
        from diffgui.app import methods

        self.method.addItems(methods.names())
        form.addRow("Method", self.method)
        self.preset = QtWidgets.QLineEdit()
        self.preset.setPlaceholderText("defaults (or a preset .toml)")
        form.addRow("Preset", self._with_browse(self.preset, self._pick_preset))
        self.align = QtWidgets.QCheckBox("register each frame onto the template")
        self.align.setChecked(True)
        form.addRow("Align", self.align)
        self.out = QtWidgets.QLineEdit()
        form.addRow("Output folder", self._with_browse(self.out, self._pick_out))
        self.workers = QtWidgets.QSpinBox()
        self.workers.setRange(1, max(1, os.cpu_count() or 1))
        self.workers.setValue(max(1, (os.cpu_count() or 1)))
        form.addRow("Workers", self.workers)
        self.bar = QtWidgets.QProgressBar()
        self.status = QtWidgets.QLabel("")
        self.table = QtWidgets.QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["frame", "status", "seconds / error"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.cellDoubleClicked.connect(self._open_row)
        buttons = QtWidgets.QHBoxLayout()
        self.start_btn, self.cancel_btn = QtWidgets.QPushButton("Start"), QtWidgets.QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        buttons.addWidget(self.start_btn)
        buttons.addWidget(self.cancel_btn)
        lay = QtWidgets.QVBoxLayout(self)
        for w in (form, buttons):
            lay.addLayout(w)
        for w in (self.bar, self.status, self.table):
            lay.addWidget(w)
        self.resize(640, 640)

    def _with_browse(self, edit, slot):
        w = QtWidgets.QWidget()
        h = QtWidgets.QHBoxLayout(w)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(edit)
        b = QtWidgets.QPushButton("...")
        b.clicked.connect(slot)
        h.addWidget(b)
        return w

    def _add_frames(self):
        files, _ = QtWidgets.QFileDialog.getOpenFileNames(self, "Frames", "", "FITS (*.fits *.fit *.fz);;All (*)")
        self.frames.addItems(files)

    def _pick_template(self):
        f, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Template", "", "FITS (*.fits *.fit *.fz);;All (*)")
        if f:
            self.template.setText(f)

    def _pick_preset(self):
        f, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Preset", "", "TOML (*.toml)")
        if f:
            self.preset.setText(f)

    def _pick_out(self):
        d = QtWidgets.QFileDialog.getExistingDirectory(self, "Output folder")
        if d:
            self.out.setText(d)

    def set_inputs(self, frames, template, out_dir, method=None, align=True, workers=1):
        """Fill the dialog programmatically (scripts and tests)."""
        self.frames.clear()
        self.frames.addItems([str(f) for f in frames])
        self.template.setText(str(template))
        self.out.setText(str(out_dir))
        if method:
            self.method.setCurrentText(method)
        self.align.setChecked(bool(align))
        self.workers.setValue(int(workers))

    def start(self) -> bool:
        from diffgui.app import batch
        from diffgui.app.batch_report import check_output_dir
        from diffgui.cli_run import resolve_preset

        frames = [self.frames.item(i).text() for i in range(self.frames.count())]
        try:
            preset = resolve_preset(self.preset.text().strip() or None,
                                    None if self.preset.text().strip() else self.method.currentText())
            if not frames or not self.template.text().strip():
                raise ValueError("pick the frames and a template")
            check_output_dir(self.out.text().strip() or ".", len(frames))
            jobs = batch.plan_jobs([(f, self.template.text().strip()) for f in frames], self.out.text().strip())
        except Exception as exc:
            self.status.setText(f"cannot start: {exc}")
            return False
        self.jobs = jobs
        self.table.setRowCount(len(jobs))
        for i, j in enumerate(jobs):
            self.table.setItem(i, 0, QtWidgets.QTableWidgetItem(os.path.basename(j.science)))
            self.table.setItem(i, 1, QtWidgets.QTableWidgetItem("waiting"))
        self.bar.setRange(0, len(jobs))
        self.bar.setValue(0)
        self.thread = _BatchThread(jobs, preset.method, preset.params, self.workers.value(),
                                   "similarity" if self.align.isChecked() else None)
        self.thread.progressed.connect(self._progress)
        self.thread.finishedWith.connect(self._finished)
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText(f"running {len(jobs)} pairs with {preset.method}")
        self.thread.start()
        return True

    def cancel(self):
        if self.thread is not None:
            self.thread.stop.set()
            self.status.setText("cancelling: pairs already running finish first")

    def _progress(self, done, total, res):
        self.bar.setValue(done)
        i = self.jobs.index(res.job)
        self.table.setItem(i, 1, QtWidgets.QTableWidgetItem(res.status))
        self.table.setItem(i, 2, QtWidgets.QTableWidgetItem(res.error or f"{res.seconds:.1f}"))

    def _finished(self, res):
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if isinstance(res, Exception):
            self.status.setText(f"failed: {res}")
            return
        self.results = res
        n = {s: sum(r.status == s for r in res) for s in ("done", "skipped", "failed", "cancelled")}
        self.status.setText(", ".join(f"{v} {k}" for k, v in n.items() if v) + " - double-click a row to open it")

    def _open_row(self, row, _col):
        if self.results and row < len(self.results) and os.path.exists(self.results[row].job.output):
            open_result(self.win, self.results[row].job.output)
