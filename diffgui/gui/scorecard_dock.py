"""The scorecard dock: the quality numbers of the last run, and where in the field it is bad.

Shows :class:`diffgui.engine.common.quality.Scorecard` of ``MainWindow.run``: one row
per number (tooltip: what ideal is; rows out of range marked), the tile map of the
median ``|D/noise|`` at star peaks and the kernel-sum map (row 0 of the maps is the
bottom of the image, as in the panels).
"""

from __future__ import annotations

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from diffgui.engine.common.quality import METRIC_INFO

from . import boxes

__all__ = ["ScorecardWidget", "install_scorecard"]

_BAD = QtGui.QColor(255, 205, 200)
_GOOD = QtGui.QColor(215, 240, 215)


def _tile_colour(v: float) -> QtGui.QColor:
    """Green at |D/noise| 0.67, yellow at 1, red from 2 on."""
    if not np.isfinite(v):
        return QtGui.QColor(235, 235, 235)
    t = float(np.clip((v - 0.67) / (2.0 - 0.67), 0.0, 1.0))
    return QtGui.QColor(int(200 + 55 * t), int(240 - 110 * t), int(200 - 70 * t))


class _MapTable(QtWidgets.QTableWidget):
    """A small grid of numbers with coloured cells."""

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        self.title = title
        self.horizontalHeader().setVisible(False)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.NoSelection)
        self.setMinimumHeight(110)

    def show_map(self, values, colour, fmt="{:.2f}", tip="") -> None:
        self.clear()
        if values is None:
            self.setRowCount(1)
            self.setColumnCount(1)
            self.setItem(0, 0, QtWidgets.QTableWidgetItem("n/a"))
            return
        values = np.asarray(values, float)
        ny, nx = values.shape
        self.setRowCount(ny)
        self.setColumnCount(nx)
        for j in range(ny):
            for i in range(nx):
                v = values[ny - 1 - j, i]  # top row of the table = top of the image
                item = QtWidgets.QTableWidgetItem("-" if not np.isfinite(v) else fmt.format(v))
                item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
                item.setBackground(colour(v))
                item.setToolTip(tip)
                self.setItem(j, i, item)
        for h in (self.horizontalHeader(), self.verticalHeader()):
            h.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.Stretch)


class ScorecardWidget(QtWidgets.QWidget):
    """Table of scorecard numbers with tile maps (no engine calls: it shows a Run's scorecard)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.summary = QtWidgets.QLabel("No run yet: the scorecard appears after each run.")
        self.summary.setWordWrap(True)
        self.table = QtWidgets.QTableWidget(len(METRIC_INFO), 3)
        self.table.setHorizontalHeaderLabels(["Score", "Value", ""])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        for row, (key, (label, ideal, _)) in enumerate(METRIC_INFO.items()):
            item = QtWidgets.QTableWidgetItem(label)
            item.setToolTip(ideal)
            self.table.setItem(row, 0, item)
        self.tiles = _MapTable("Star residual by tile")
        self.ksum = _MapTable("Kernel sum by tile")
        maps = QtWidgets.QHBoxLayout()
        for title, w in (("Where it is bad: median |D/noise| at star peaks", self.tiles),
                         ("Kernel sum across the field", self.ksum)):
            lab = QtWidgets.QLabel(title)
            lab.setWordWrap(True)
            maps.addLayout(boxes.column(lab, w))
        self.diagnose = QtWidgets.QPushButton("Field diagnostics...")
        self.diagnose.setToolTip("FWHM, ellipticity and flux ratio across the field, with advice on "
                                 "the settings (before any run)")
        self.suggest = QtWidgets.QPushButton("Suggest settings...")
        self.suggest.setToolTip("Try the settings that matter for this method and keep the best "
                                "(same as diffgui tune)")
        boxes.column(boxes.row(self.diagnose, self.suggest), self.summary, (self.table, 2), (maps, 1),
                     parent=self)
        self.card = None

    def clear(self, text: str = "No run yet: the scorecard appears after each run.") -> None:
        self.card = None
        self.summary.setText(text)
        for row in range(self.table.rowCount()):
            for col in (1, 2):
                self.table.setItem(row, col, QtWidgets.QTableWidgetItem(""))
        self.tiles.show_map(None, _tile_colour)
        self.ksum.show_map(None, _tile_colour)

    def show_run(self, run) -> None:
        """Show ``run.scorecard`` (or why there is none)."""
        card = getattr(run, "scorecard", None)
        if card is None:
            self.clear(f"Run {run.run_id} ({run.label}): no scorecard (too few stars to score?)")
            return
        self.card = card
        flagged = card.flagged()
        by = {"noise": "D / noise map", "scorr": "S_corr", "estimated": "D / its robust std"}
        self.summary.setText(
            f"Run {run.run_id} ({run.label}), scored on {card.n_stars} stars not used by the fit, "
            f"as {by.get(card.normalised_by, card.normalised_by)}. "
            + (f"Out of range: {len(flagged)}." if flagged else "All scores in range.")
            + ("" if not card.warnings else " " + " ".join(card.warnings)))
        for row, key in enumerate(METRIC_INFO):
            m = card.metrics[key]
            val = QtWidgets.QTableWidgetItem(m.text())
            val.setToolTip(m.ideal)
            mark = QtWidgets.QTableWidgetItem({True: "ok", False: "check", None: ""}[m.ok])
            mark.setToolTip(m.ideal)
            if m.ok is not None:
                for it in (val, mark):
                    it.setBackground(_GOOD if m.ok else _BAD)
            self.table.setItem(row, 1, val)
            self.table.setItem(row, 2, mark)
        self.tiles.show_map(card.tile_map, _tile_colour,
                            tip=METRIC_INFO["peak_median"][1])
        med = np.nanmedian(card.kernel_sum_map) if card.kernel_sum_map is not None else 1.0
        self.ksum.show_map(card.kernel_sum_map,
                           lambda v: _tile_colour(0.67 + 10 * abs(v / med - 1)), fmt="{:.3f}",
                           tip=METRIC_INFO["kernel_sum_spread"][1])


def _diagnose(win):
    from .diagnostics_dialog import show_diagnostics

    return show_diagnostics(win)


def _suggest(win):
    from .tune_dialog import open_tune_dialog

    return open_tune_dialog(win)


def install_scorecard(win) -> ScorecardWidget:
    """Add the scorecard dock to a :class:`~diffgui.gui.main_window.MainWindow`."""
    widget = ScorecardWidget()
    win.scorecard = widget
    win.scorecard_dock = win.add_dock(widget, "Scorecard", QtCore.Qt.DockWidgetArea.RightDockWidgetArea,
                                      name="dock_scorecard")
    widget.diagnose.clicked.connect(lambda: _diagnose(win))
    widget.suggest.clicked.connect(lambda: _suggest(win))
    win.runFinished.connect(widget.show_run)
    win.pairLoaded.connect(lambda pair: widget.clear("New pair: run a method to score it."))
    widget.clear()
    return widget
