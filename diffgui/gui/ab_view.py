"""A/B view: two runs' differences blinked or split by a draggable divider, scorecards side by side."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from diffgui.app.history import compare

__all__ = ["ABView"]


def _levels(a, b):
    v = np.concatenate([x[np.isfinite(x)].ravel()[::7] for x in (a, b)])
    if v.size == 0:
        return -1.0, 1.0
    s = 1.4826 * np.median(np.abs(v - np.median(v))) or 1.0
    return -5 * s, 5 * s


class ABView(QtWidgets.QDialog):
    """Compare run ``a`` and run ``b`` (each a finished Run with a ``diff`` result).

    ``mode`` is ``'split'`` (A left of the divider, B right; drag the divider) or
    ``'blink'`` (A and B alternate every ``interval_ms``).
    """

    presetKept = QtCore.pyqtSignal(object)

    def __init__(self, run_a, run_b, parent=None, interval_ms: int = 600):
        super().__init__(parent)
        self.setWindowTitle(f"A/B: run {run_a.run_id} vs run {run_b.run_id}")
        self.runs = {"a": run_a, "b": run_b}
        self.a = np.asarray(run_a.results["diff"], float)
        self.b = np.asarray(run_b.results["diff"], float)
        if self.a.shape != self.b.shape:
            raise ValueError("the two runs are of different pairs (image shapes differ)")
        self.mode, self.showing = "split", "a"
        self.plot = pg.PlotWidget()
        self.plot.setAspectLocked(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setLevels(_levels(self.a, self.b))
        self.plot.addItem(self.image)
        ny, nx = self.a.shape
        self.divider = pg.InfiniteLine(pos=nx / 2, angle=90, movable=True, pen=pg.mkPen("y", width=2),
                                       bounds=(0, nx))
        self.divider.sigPositionChanged.connect(self._refresh)
        self.plot.addItem(self.divider)
        self.label = QtWidgets.QLabel()
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(int(interval_ms))
        self.timer.timeout.connect(self.toggle)
        self.split_button = QtWidgets.QPushButton("Split")
        self.blink_button = QtWidgets.QPushButton("Blink")
        self.split_button.clicked.connect(lambda: self.set_mode("split"))
        self.blink_button.clicked.connect(lambda: self.set_mode("blink"))
        self.keep_a = QtWidgets.QPushButton(f"Keep A (run {run_a.run_id}) as preset...")
        self.keep_b = QtWidgets.QPushButton(f"Keep B (run {run_b.run_id}) as preset...")
        self.keep_a.clicked.connect(lambda: self.presetKept.emit(run_a))
        self.keep_b.clicked.connect(lambda: self.presetKept.emit(run_b))
        self.table = self._score_table(run_a, run_b)
        bar = QtWidgets.QHBoxLayout()
        for w in (self.split_button, self.blink_button, self.label):
            bar.addWidget(w)
        bar.addStretch(1)
        keep = QtWidgets.QHBoxLayout()
        keep.addWidget(self.keep_a)
        keep.addWidget(self.keep_b)
        right = QtWidgets.QVBoxLayout()
        right.addWidget(QtWidgets.QLabel("Scorecards (the better value of a changed score is green)"))
        right.addWidget(self.table, 1)
        right.addLayout(keep)
        body = QtWidgets.QHBoxLayout()
        left = QtWidgets.QVBoxLayout()
        left.addLayout(bar)
        left.addWidget(self.plot, 1)
        body.addLayout(left, 3)
        body.addLayout(right, 2)
        QtWidgets.QVBoxLayout(self).addLayout(body)
        self.resize(1100, 560)
        self._refresh()

    def _score_table(self, ra, rb) -> QtWidgets.QTableWidget:
        rows = compare(ra.quality, rb.quality)
        self.rows = rows
        tab = QtWidgets.QTableWidget(len(rows), 3)
        tab.setHorizontalHeaderLabels(["Score", f"A (run {ra.run_id})", f"B (run {rb.run_id})"])
        tab.verticalHeader().setVisible(False)
        tab.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        tab.horizontalHeader().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        good, bad = QtGui.QColor(215, 240, 215), QtGui.QColor(255, 215, 205)
        for i, r in enumerate(rows):
            name = QtWidgets.QTableWidgetItem(("* " if r.changed else "") + r.label)
            name.setToolTip(r.ideal + ("\n* changed between A and B" if r.changed else ""))
            tab.setItem(i, 0, name)
            for col, (side, v) in enumerate((("a", r.a), ("b", r.b)), start=1):
                it = QtWidgets.QTableWidgetItem("n/a" if v is None else f"{v:.3g}")
                if r.better:
                    it.setBackground(good if r.better == side else bad)
                tab.setItem(i, col, it)
        return tab

    def set_mode(self, mode: str) -> None:
        """``'split'`` or ``'blink'``."""
        if mode not in ("split", "blink"):
            raise ValueError(f"mode must be 'split' or 'blink', got {mode!r}")
        self.mode = mode
        self.divider.setVisible(mode == "split")
        if mode == "blink":
            self.timer.start()
        else:
            self.timer.stop()
        self._refresh()

    def toggle(self) -> None:
        """Blink: show the other run."""
        self.showing = "b" if self.showing == "a" else "a"
        self._refresh()

    def composite(self) -> np.ndarray:
        """What is drawn: A left of the divider and B right of it, or the blinked run."""
        if self.mode == "blink":
            return self.a if self.showing == "a" else self.b
        cut = int(np.clip(round(self.divider.value()), 0, self.a.shape[1]))
        out = self.b.copy()
        out[:, :cut] = self.a[:, :cut]
        return out

    def _refresh(self) -> None:
        self.image.setImage(self.composite(), autoLevels=False)
        if self.mode == "blink":
            run = self.runs[self.showing]
            self.label.setText(f"showing {self.showing.upper()}: run {run.run_id} ({run.label})")
        else:
            self.label.setText("A | B: drag the yellow divider")

    def closeEvent(self, ev):  # noqa: N802
        self.timer.stop()
        super().closeEvent(ev)
