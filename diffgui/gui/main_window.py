"""The main window: panels and blink view, method panel, log, menus, status bar, files.

Extension points for other views (the candidate table):

- :meth:`MainWindow.add_dock` puts a widget in a dock (right side by default) and
  adds its toggle to the View menu;
- :attr:`MainWindow.pair`, :attr:`MainWindow.run` (the last finished
  :class:`~diffgui.app.run.Run`), :meth:`MainWindow.current_params`;
- signals :attr:`pairLoaded`, :attr:`runFinished`, :attr:`cursorMoved`;
- :meth:`MainWindow.center_on` pans every linked panel to a pixel.
"""

from __future__ import annotations

import os
import time

from PyQt6 import QtCore, QtGui, QtWidgets

from diffgui.app import methods as registry
from diffgui.app.display import DisplayImage, shared_limits
from diffgui.app.pair import Pair, demo_pair, load_pair
from diffgui.app.progress import ProgressClock

from .blink import BlinkView
from .controls import DisplayToolbar, MethodPanel
from .imaging import grab_png
from .menus import build_menus
from .panels import DEFAULT_ROLES, PanelGrid, method_roles, result_for
from .window_layout import arrange_docks, fit_to_screen, format_radec, param_summary, save_layout
from .worker import RunController

__all__ = ["MainWindow"]

_RESULT_ROLES = ("diff", "scorr", "noise", "convolved", "scaled", "psf", "image_psf", "template_psf")
_STAGE_PIXELS = 4_000_000  # results larger than this are shown one panel at a time
_STAGE_MS = 40
_SHORT = {"science": "sci", "template": "tmpl", "diff": "diff", "scorr": "S_corr", "noise": "noise",
          "convolved": "conv", "scaled": "scaled"}


class MainWindow(QtWidgets.QMainWindow):
    """diffgui's main window.

    Parameters
    ----------
    settings : QtCore.QSettings, optional
        Where recent pairs and the layout are remembered (tests pass a temporary one).
    """

    pairLoaded = QtCore.pyqtSignal(object)
    runFinished = QtCore.pyqtSignal(object)
    cursorMoved = QtCore.pyqtSignal(float, float)

    def __init__(self, settings: QtCore.QSettings | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings or QtCore.QSettings("diffgui", "diffgui")
        self.pair: Pair | None = None
        self.run = None
        self._pending_drop: str | None = None
        self._staging = (None, [])
        self._t_start = 0.0
        self.setWindowTitle("diffgui")
        self.resize(1500, 900)  # until fit_to_screen() at the end of the constructor
        self.clock = None
        self.setAcceptDrops(True)
        self.setDockOptions(QtWidgets.QMainWindow.DockOption.AnimatedDocks
                            | QtWidgets.QMainWindow.DockOption.AllowTabbedDocks)

        self.grid = PanelGrid(roles=DEFAULT_ROLES, columns=int(self.settings.value("columns", 0)))
        self.blink = BlinkView(self.grid)
        self.tabs = QtWidgets.QTabWidget()
        self.tabs.setTabPosition(QtWidgets.QTabWidget.TabPosition.West)  # the height goes to the images
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.grid, "Panels")
        self.tabs.addTab(self.blink, "Blink")
        self.tabs.currentChanged.connect(self._on_tab)
        self.setCentralWidget(self.tabs)

        self.toolbar = DisplayToolbar(self, columns=self.grid.columns)
        self.addToolBar(self.toolbar)
        self.toolbar.optionsChanged.connect(self._on_display_options)
        self.toolbar.columnsChanged.connect(self.set_columns)
        self.toolbar.layoutChanged.connect(self.set_layout_mode)
        self.toolbar.kernelModeChanged.connect(lambda n: self._update_kernel())

        self.method_panel = MethodPanel()
        self.method_panel.setMinimumWidth(300)
        self.form = self.method_panel.form
        self.method_dock = self.add_dock(self.method_panel, "Method",
                                         QtCore.Qt.DockWidgetArea.LeftDockWidgetArea)
        self.log_view = QtWidgets.QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_dock = self.add_dock(self.log_view, "Log", QtCore.Qt.DockWidgetArea.BottomDockWidgetArea)
        self.resizeDocks([self.method_dock], [330], QtCore.Qt.Orientation.Horizontal)

        self.controller = RunController(self)
        self.controller.log.connect(self.append_log)
        self.controller.progress.connect(self._on_progress)
        self.controller.finished.connect(self._on_run_finished)
        self.controller.failed.connect(self._on_run_failed)
        self.controller.cancelled.connect(self._on_run_cancelled)
        self.controller.busy.connect(self._on_busy)
        self.method_panel.runRequested.connect(self.start_run)
        self.method_panel.cancelRequested.connect(self.cancel_run)
        self.method_panel.methodChanged.connect(self._on_method_changed)

        self.cursor_label = QtWidgets.QLabel("")
        self.status_label = QtWidgets.QLabel("Open a pair: File > Open, drag two FITS files here, or File > Demo")
        self.progress = QtWidgets.QProgressBar()
        # wide enough for the longest "stage %" text (a squeezed bar wraps it over two lines)
        self.progress.setFixedWidth(self.progress.fontMetrics().horizontalAdvance("significance map 100%") + 32)
        self.progress.setRange(0, 0)
        self.progress.setVisible(False)
        sb = self.statusBar()
        sb.addWidget(self.cursor_label, 1)
        sb.addPermanentWidget(self.status_label)
        sb.addPermanentWidget(self.progress)
        self.elapsed = QtCore.QTimer(self)
        self.elapsed.setInterval(250)
        self.elapsed.timeout.connect(self._tick)

        self.grid.cursorMoved.connect(self._on_cursor)
        self.actions = build_menus(self)
        from .vetting import install_vetting  # candidates dock, Candidates and Presets menus

        install_vetting(self)
        from .scorecard_dock import install_scorecard  # quality scorecard dock (issue 13)

        install_scorecard(self)
        from .history_dock import install_history  # run history and A/B (issue 13)

        install_history(self)
        from .preview_dock import install_preview  # region preview (issue 13)

        install_preview(self)
        from .series import install_series  # Series menu: align, batch dialog, light curves (issue 15)

        install_series(self)
        self._on_method_changed(self.method_panel.method())
        self.toolbar.set_layout_mode(str(self.settings.value("layout_mode", "main") or "main"))
        arrange_docks(self)  # after every dock exists (docks of other views included)
        fit_to_screen(self)  # within the screen's available geometry, or the remembered layout

    # ---- extension points -------------------------------------------------------------
    def add_dock(self, widget, title: str, area=QtCore.Qt.DockWidgetArea.RightDockWidgetArea,
                 name: str | None = None) -> QtWidgets.QDockWidget:
        """Put ``widget`` in a dock of the window and a toggle for it in the View menu."""
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(name or f"dock_{title.lower().replace(' ', '_')}")
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        view = getattr(self, "view_menu", None)
        if view is not None:
            view.addAction(dock.toggleViewAction())
        return dock

    def current_params(self) -> dict:
        """Validated values of the form (raises ParamError naming the bad fields)."""
        return self.form.validated()

    def current_method(self) -> str | None:
        return self.method_panel.method()

    def center_on(self, x: float, y: float, half_width: float | None = None) -> None:
        """Pan every linked panel to pixel ``(x, y)``; optionally zoom to ``±half_width`` pixels."""
        vb = self.grid.master
        (x0, x1), (y0, y1) = vb.viewRange()
        hw = half_width if half_width else (x1 - x0) / 2
        hh = half_width if half_width else (y1 - y0) / 2
        vb.setRange(xRange=(x - hw, x + hw), yRange=(y - hh, y + hh), padding=0.0)
        self.grid.set_cursor(x, y)

    # ---- pairs ------------------------------------------------------------------------
    def open_pair(self, science, template, **kwargs) -> bool:
        """Load a pair from files; errors become a message box. Returns success."""
        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
        try:
            pair = load_pair(science, template, **kwargs)
        except Exception as exc:
            QtWidgets.QApplication.restoreOverrideCursor()
            self.show_error("Cannot open the pair", str(exc))
            return False
        QtWidgets.QApplication.restoreOverrideCursor()
        self.set_pair(pair)
        self.add_recent(pair.image_path, pair.template_path)
        return True

    def open_demo(self, seed: int = 1) -> bool:
        try:
            pair = demo_pair(seed)
        except Exception as exc:
            self.show_error("Cannot make the demo pair", str(exc))
            return False
        self.set_pair(pair)
        return True

    def set_pair(self, pair: Pair) -> None:
        """Show a new pair; results of the previous pair are cleared, a running run is cancelled."""
        if self.controller.running:
            self.controller.cancel()
        self.pair = pair
        self.run = None
        self._staging = (None, [])
        sci, tmpl = DisplayImage.from_array(pair.image), DisplayImage.from_array(pair.template)
        levels = shared_limits([sci, tmpl], self.grid.limits_mode)
        sci.quantize(levels)  # uint8 renderings shared by the grid and the blink view
        tmpl.quantize(levels)
        self.grid.clear_results("F5 to run")  # titles, crosshair and results of the last pair go
        self.cursor_label.setText("")
        self.grid.set_images({"science": sci, "template": tmpl})
        self.grid.reset_view()
        self.blink.sync_images()
        self.blink.copy_view_from(self.grid.master)
        ny, nx = pair.shape
        self.setWindowTitle(f"diffgui - {pair.name}")
        self.status_label.setText(f"{pair.name}: {nx} x {ny} px")
        self.append_log(f"loaded {pair.name} ({nx} x {ny})")
        self._check_alignment(pair)
        self.pairLoaded.emit(pair)

    def add_recent(self, sci: str, tmpl: str) -> None:
        entry = f"{os.path.abspath(sci)}|{os.path.abspath(tmpl)}"
        recent = [r for r in self.recent_pairs() if r != entry]
        self.settings.setValue("recent_pairs", [entry, *recent][:10])
        self.actions.refresh_recent()

    def recent_pairs(self) -> list:
        val = self.settings.value("recent_pairs", []) or []
        return [val] if isinstance(val, str) else list(val)

    # ---- runs -------------------------------------------------------------------------
    def start_run(self) -> bool:
        """Run the chosen method on the pair with the form's values (F5)."""
        if self.pair is None:
            self.show_error("Nothing to subtract", "Open a pair first (File > Open pair, or File > Demo).")
            return False
        method = self.method_panel.method()
        if method is None or not registry.get(method).available:
            self.show_error("No method", "No available subtraction method is selected.")
            return False
        try:
            params = self.current_params()
        except Exception as exc:
            self.show_error("Invalid parameters", str(exc))
            return False
        run = self.controller.start(self.pair, method, params, levels=self.grid.levels_function())
        self._t_start = time.perf_counter()
        self.append_log(f"--- run {run.run_id}: {run.label} ---")
        return True

    def cancel_run(self) -> None:
        if self.controller.running:
            self.controller.cancel()

    def _on_busy(self, busy: bool) -> None:
        self.method_panel.set_busy(busy)
        self.progress.setVisible(busy)
        # a determinate bar from the start: "starting" until the engine's first stage
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("starting %p%")
        self.progress.setTextVisible(True)
        self.actions.cancel.setEnabled(busy)
        if busy:
            run = self.controller.current
            self.clock = ProgressClock(run.label if run is not None else "run")
            self.elapsed.start()
        else:
            self.elapsed.stop()

    def _tick(self) -> None:
        if self.controller.current is not None and self.clock is not None:
            self.status_label.setText(self.clock.text())

    def _on_progress(self, stage: str, fraction: float) -> None:
        """A stage's fraction from the engine: a determinate bar and the time left."""
        if self.clock is None:
            return
        self.clock.update(stage, fraction)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(round(1000 * fraction)))
        self.progress.setFormat(f"{stage} %p%")
        self.progress.setTextVisible(True)
        self._tick()

    def _on_method_changed(self, name) -> None:
        """Show only the panels the chosen method produces."""
        if not name:
            return
        try:
            info = registry.get(name)
        except Exception:
            return
        self.grid.set_layout(roles=method_roles(info))
        if getattr(self, "actions", None) is not None:
            for role, act in self.actions.panels.items():
                act.blockSignals(True)
                act.setChecked(role in self.grid.roles)
                act.blockSignals(False)

    def _on_run_finished(self, run, disp: dict) -> None:
        """Show a run's results; big images go in one panel per event-loop turn, so that
        drawing five 4096^2 images never blocks the loop in one go."""
        info = registry.get(run.method)
        self.grid.set_layout(roles=method_roles(info))
        self.grid.set_titles(param_summary(run.method, info.label, run.params))
        steps = [(r, result_for(disp, r), f"no {info.label} output") for r in _RESULT_ROLES]
        self._staging = (run, steps)
        big = self.pair is not None and self.pair.image.size > _STAGE_PIXELS
        if not big:
            for role, d, holder in steps:
                self.grid.set_image(role, d, holder)
            steps.clear()
        self._next_stage(run)

    def _next_stage(self, run) -> None:
        if getattr(self, "_staging", (None,))[0] is not run:
            return  # a newer pair or run replaced it meanwhile
        steps = self._staging[1]
        if steps:
            role, d, holder = steps.pop(0)
            self.grid.set_image(role, d, holder)
            QtCore.QTimer.singleShot(_STAGE_MS, lambda: self._next_stage(run))
            return
        self._staging = (None, [])
        self.run = run
        info = registry.get(run.method)
        self._update_kernel()
        self.blink.sync_images()
        t = run.timings.get("total", 0.0)
        done = self.clock.done_text(t) if self.clock is not None else f"{info.label} done (engine {t:.2f} s)"
        self.status_label.setText(done)
        self.append_log(done)
        self.runFinished.emit(run)

    def _on_run_failed(self, run, message: str) -> None:
        self.status_label.setText(f"{run.label} failed")
        self.append_log(f"FAILED: {message}")
        self.show_error(f"{run.label} failed", message)

    def _on_run_cancelled(self, run) -> None:
        self.status_label.setText(f"{run.label} cancelled")
        self.append_log("cancelled")

    def _check_alignment(self, pair) -> None:
        """Warn at once when the pair is not aligned (every run would refuse it)."""
        from diffgui.engine.common.alignment import check_alignment
        from diffgui.engine.errors import InputError

        try:
            check_alignment(pair.image, pair.template, pair.mask, pair.template_mask)
        except InputError as exc:
            self.append_log(f"WARNING: {exc}")
            from .series import offer_align  # a status-bar button that registers the pair (issue 15)

            offer_align(self, str(exc))

    def append_log(self, line: str) -> None:
        line = str(line)
        self.log_view.appendPlainText(line)
        if line.lstrip().startswith("WARNING"):  # the engine's warnings also reach the status bar
            self.statusBar().showMessage(line.strip(), 20000)

    # ---- display ----------------------------------------------------------------------
    def _on_display_options(self, limits: str, stretch: str, nsigma: float) -> None:
        self.grid.set_display_options(limits, stretch, nsigma)
        self.blink.sync_images()

    def set_columns(self, n: int) -> None:
        self.grid.set_layout(columns=n)
        self.settings.setValue("columns", int(n))

    def set_layout_mode(self, mode: str) -> None:
        """``'main'`` (one large panel, the others beside it) or ``'grid'``; remembered."""
        self.grid.set_layout(mode=mode)
        self.settings.setValue("layout_mode", mode)

    def set_panel_visible(self, role: str, on: bool) -> None:
        roles = [r for r in self.grid.panels if (r in self.grid.roles and r != role) or (r == role and on)]
        self.grid.set_layout(roles=roles)

    def _on_tab(self, idx: int) -> None:
        if self.tabs.widget(idx) is self.blink:
            self.blink.sync_images()
            self.blink.copy_view_from(self.grid.master)
            self.blink.setFocus()
        else:
            self.blink.set_playing(False)
            self.blink.copy_view_to(self.grid.master)

    def show_blink(self, on: bool = True) -> None:
        self.tabs.setCurrentWidget(self.blink if on else self.grid)

    def _on_cursor(self, x: float, y: float) -> None:
        parts = [f"x={x:.1f} y={y:.1f}"]
        if self.pair is not None:
            radec = self.pair.pixel_to_world(x, y)
            if radec is not None:
                parts.append(format_radec(radec[0], radec[1], self.radec_format()))
        vals = self.grid.values_at(x, y)
        parts.extend(f"{_SHORT.get(k, k)}={v:.4g}" for k, v in vals.items())
        self.cursor_label.setText("   ".join(parts))
        if self.toolbar.kernel_grid_size() == 0 and "kernel" in self.grid.roles:
            self._update_kernel()
        self.cursorMoved.emit(x, y)

    def radec_format(self) -> str:
        """``'both'`` (default), ``'degrees'`` or ``'sexagesimal'`` (View > Coordinates)."""
        return str(self.settings.value("radec_format", "both") or "both")

    def set_radec_format(self, fmt: str) -> None:
        if fmt not in ("both", "degrees", "sexagesimal"):
            raise ValueError(f"unknown coordinate format {fmt!r}")
        self.settings.setValue("radec_format", fmt)
        if self.grid.cursor is not None:
            self._on_cursor(*self.grid.cursor)

    def _update_kernel(self) -> None:
        results = self.run.results if self.run is not None else {}
        shape = self.pair.shape if self.pair is not None else None
        self.grid.show_kernel(results if shape else {}, shape, self.toolbar.kernel_grid_size(),
                              "no kernel" if self.run is not None else "F5 to run")

    # ---- files ------------------------------------------------------------------------
    def save_results(self, path: str, overwrite: bool = False) -> bool:
        from diffgui.app.results_io import save_run

        if self.run is None:
            self.show_error("Nothing to save", "Run a subtraction first.")
            return False
        try:
            save_run(self.run, path, header=self.pair.image_header if self.pair else None, overwrite=overwrite)
        except Exception as exc:
            self.show_error("Cannot save the results", str(exc))
            return False
        self.append_log(f"results saved to {path}")
        return True

    def save_panels_png(self, path: str) -> str:
        """PNG of the panel grid (or of the blink view when it is shown)."""
        return grab_png(self.tabs.currentWidget(), path)

    def save_window_png(self, path: str) -> str:
        return grab_png(self, path)

    def show_error(self, title: str, message: str) -> None:
        """A modal message (tests patch QMessageBox.critical)."""
        QtWidgets.QMessageBox.critical(self, title, message)

    # ---- drag and drop ----------------------------------------------------------------
    def dragEnterEvent(self, ev):  # noqa: N802
        if ev.mimeData().hasUrls():
            ev.acceptProposedAction()

    def dropEvent(self, ev):  # noqa: N802
        files = [u.toLocalFile() for u in ev.mimeData().urls() if u.isLocalFile()]
        self.handle_dropped(files)
        ev.acceptProposedAction()

    def handle_dropped(self, files: list) -> None:
        """Two files: science and template; one file: remembered until the second arrives."""
        if len(files) >= 2:
            self._pending_drop = None
            self.open_pair(files[0], files[1])
        elif len(files) == 1 and self._pending_drop is None:
            self._pending_drop = files[0]
            self.status_label.setText(f"science: {os.path.basename(files[0])}; now drop the template")
        elif len(files) == 1:
            sci, self._pending_drop = self._pending_drop, None
            self.open_pair(sci, files[0])

    def closeEvent(self, ev):  # noqa: N802
        save_layout(self)
        self.shutdown()
        super().closeEvent(ev)

    def shutdown(self) -> None:
        """Stop everything that could still call into the window: timers, the staging of
        results, the run and the candidate search, and the pyqtgraph mouse proxy (its
        timer fires after a close). Called on close; harmless to call again."""
        self.blink.set_playing(False)
        self.elapsed.stop()
        self._staging = (None, [])  # pending stage timers find nothing to do
        vetting = getattr(self, "vetting", None)
        if vetting is not None:
            vetting.stop()
        view = getattr(self, "vetting_view", None)
        if view is not None:
            view.detach_keys()
        proxy = getattr(self.grid, "_proxy", None)
        if proxy is not None:
            proxy.disconnect()
            self.grid._proxy = None
        self.controller.shutdown(1000)

    def dispose(self) -> None:
        """Close the window and destroy its Qt objects now, at a safe point.

        Left to Python's cyclic garbage collector, a closed window's C++ objects may be
        destroyed from inside a later paint event of another window, which Qt does not
        survive ("Cannot destroy paint device that is being painted"). Scripts and tests
        that drop a window call this instead.
        """
        from PyQt6 import sip

        if sip.isdeleted(self):
            return
        self.close()
        self.deleteLater()
        QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)


def icon() -> QtGui.QIcon:
    return QtGui.QIcon.fromTheme("applications-science")
