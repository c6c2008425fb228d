"""Region preview dock: a rectangle on the science panel; every parameter edit re-runs the method
on that region (plus the kernel margin) after a debounce, and the result is shown here, marked PREVIEW."""

from __future__ import annotations

import threading

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from diffgui.app.preview import RegionPreview
from diffgui.engine.errors import Cancelled

from . import boxes

__all__ = ["PreviewWidget", "install_preview"]


class _Relay(QtCore.QObject):
    done = QtCore.pyqtSignal(object, int)
    failed = QtCore.pyqtSignal(str, int)


class PreviewWidget(QtWidgets.QWidget):
    """Controls and result of the region preview."""

    def __init__(self, win, debounce_ms: int = 400, parent=None):
        super().__init__(parent)
        self.win, self.model, self.roi, self.last = win, None, None, None
        self._serial = 0
        self.toggle = QtWidgets.QPushButton("Preview a region")
        self.toggle.setCheckable(True)
        self.toggle.toggled.connect(self.set_active)
        self.full = QtWidgets.QPushButton("Run full frame")
        self.full.clicked.connect(win.start_run)
        self.mark = QtWidgets.QLabel("")
        self.mark.setStyleSheet("color: #b00; font-weight: bold")
        self.mark.setWordWrap(True)
        self.view = pg.ImageView()
        self.view.ui.roiBtn.hide()
        self.view.ui.menuBtn.hide()
        self.timer = QtCore.QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(int(debounce_ms))
        self.timer.timeout.connect(self.start)
        self.relay = _Relay()
        self.relay.done.connect(self._done)
        self.relay.failed.connect(self._failed)
        boxes.column(boxes.row(self.toggle, self.full), self.mark, (self.view, 1), parent=self)
        win.form.changed.connect(self.schedule)
        win.pairLoaded.connect(lambda pair: self.toggle.setChecked(False))

    def set_active(self, on: bool) -> None:
        """Show a draggable rectangle on the science panel (centre of the view) or remove it."""
        vb = self.win.grid.master
        if self.roi is not None:
            vb.removeItem(self.roi)
            self.roi = None
        if not on:
            if self.model is not None:
                self.model.cancel()
            self.model = None
            self.mark.setText("")
            return
        if self.win.pair is None:
            self.win.show_error("Region preview", "Open a pair first.")
            self.toggle.setChecked(False)
            return
        self.model = RegionPreview(self.win.pair)
        ny, nx = self.win.pair.shape
        size = min(256, nx, ny)
        self.roi = pg.RectROI([(nx - size) / 2, (ny - size) / 2], [size, size], pen=pg.mkPen("r", width=2))
        vb.addItem(self.roi)
        self.roi.sigRegionChangeFinished.connect(lambda *_: self.schedule())
        self.schedule()

    def region(self) -> tuple:
        (x, y), (w, h) = self.roi.pos(), self.roi.size()
        return x, y, x + w, y + h

    def schedule(self) -> None:
        """Debounce: start a preview ``debounce_ms`` after the last edit."""
        if self.model is not None:
            self.timer.start()

    def start(self) -> bool:
        """Run the preview now (cancelling one still running)."""
        if self.model is None or self.roi is None:
            return False
        try:
            self.model.set_region(*self.region())
            params = self.win.current_params()
        except Exception as exc:  # a bad region or bad parameters: say so, stay usable
            self.mark.setText(f"No preview: {exc}")
            return False
        method = self.win.current_method()
        self._serial += 1
        serial, model = self._serial, self.model
        self.mark.setText(f"PREVIEW running: {method} on {self._region_text()} ...")

        def work():
            try:
                self.relay.done.emit(model.request(method, params), serial)
            except Cancelled:
                pass
            except Exception as exc:
                self.relay.failed.emit(str(exc), serial)
        threading.Thread(target=work, daemon=True).start()
        return True

    def _region_text(self) -> str:
        r = self.model.region
        return f"({r.x0}, {r.y0})-({r.x1}, {r.y1})" if r else "?"

    def _done(self, run, serial: int) -> None:
        if serial != self._serial:
            return
        self.last = run
        diff = np.asarray(run.results["diff"], float)
        noise = run.results.get("noise")
        img = diff / noise if isinstance(noise, np.ndarray) and noise.shape == diff.shape else diff
        img = np.where(np.isfinite(img), img, 0)
        s = 1.4826 * np.median(np.abs(img - np.median(img))) or 1.0
        self.view.setImage(img.T, levels=(-5 * s, 5 * s))
        self.mark.setText(f"PREVIEW (not the full frame): {run.label} on {self._region_text()}, "
                          f"{run.timings.get('total', 0):.2f} s; 'Run full frame' for the whole image.")

    def _failed(self, message: str, serial: int) -> None:
        if serial == self._serial:
            self.mark.setText(f"No preview: {message}")


def install_preview(win) -> PreviewWidget:
    widget = PreviewWidget(win)
    win.preview = widget
    win.preview_dock = win.add_dock(widget, "Region preview", QtCore.Qt.DockWidgetArea.RightDockWidgetArea,
                                    name="dock_region_preview")
    return widget
