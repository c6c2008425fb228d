"""The run history dock: every run since the window opened; show again, delete, export, A/B."""

from __future__ import annotations

from PyQt6 import QtCore, QtWidgets

from diffgui.app.display import DisplayImage
from diffgui.app.history import RunHistory

__all__ = ["HistoryWidget", "install_history"]

_COLUMNS = ("Run", "Method", "Changed", "Median |D/n|", "p95", "Flagged", "Time (s)")


class HistoryWidget(QtWidgets.QWidget):
    """A table of :class:`~diffgui.app.history.RunHistory` with its actions."""

    def __init__(self, win, history: RunHistory, parent=None):
        super().__init__(parent)
        self.win, self.history = win, history
        self.table = QtWidgets.QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.doubleClicked.connect(lambda *_: self.show_selected())
        self.buttons = {}
        bar = QtWidgets.QHBoxLayout()
        for name, text, slot in (("show", "Show", self.show_selected), ("delete", "Delete", self.delete_selected),
                                 ("ab", "A/B...", self.ab_selected), ("csv", "Export CSV...", self.ask_export)):
            b = QtWidgets.QPushButton(text)
            b.clicked.connect(slot)
            bar.addWidget(b)
            self.buttons[name] = b
        lay = QtWidgets.QVBoxLayout(self)
        lay.addWidget(self.table, 1)
        lay.addLayout(bar)
        self.ab_view = None
        self.refresh()

    def refresh(self) -> None:
        entries = self.history.entries
        self.table.setRowCount(len(entries))
        for i, e in enumerate(entries):
            med, p95 = e.metric("peak_median"), e.metric("peak_p95")
            flagged = ", ".join((e.run.quality or {}).get("flagged") or [])
            cells = (str(e.run_id), e.run.label, e.changes_text(),
                     "n/a" if med is None else f"{med:.2f}", "n/a" if p95 is None else f"{p95:.2f}",
                     flagged, f"{e.seconds:.2f}")
            for col, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                if col == 2:
                    item.setToolTip(text)
                self.table.setItem(i, col, item)
        self.buttons["csv"].setEnabled(bool(entries))

    def selected(self) -> list:
        return sorted({ix.row() for ix in self.table.selectionModel().selectedRows()})

    def add(self, run) -> None:
        if run.status == "done":
            self.history.add(run)
            self.refresh()

    def show_index(self, i: int) -> None:
        """Show run ``i`` of the history in the panels again (and its scorecard)."""
        run = self.history.run(i)
        levels = self.win.grid.levels_function()
        disp = {}
        for k, v in run.arrays().items():
            d = DisplayImage.from_array(v)
            d.quantize(levels(k, d))
            disp[k] = d
        self.win.append_log(f"showing run {run.run_id} ({run.label}) from the history")
        self.win._on_run_finished(run, disp)
        self.refresh()

    def show_selected(self) -> None:
        rows = self.selected()
        if rows:
            self.show_index(rows[-1])

    def delete_selected(self) -> None:
        for i in reversed(self.selected()):
            self.history.delete(i)
        self.refresh()

    def ab_selected(self):
        rows = self.selected()
        if len(rows) != 2:
            self.win.show_error("A/B", "Select exactly two runs of the history (Ctrl+click).")
            return None
        return self.open_ab(*rows)

    def open_ab(self, i: int, j: int):
        """Open the A/B view of history entries ``i`` (A) and ``j`` (B)."""
        from .ab_view import ABView

        ra, rb = self.history.run(i), self.history.run(j)
        try:
            self.ab_view = ABView(ra, rb, self.win)
        except (ValueError, KeyError) as exc:
            self.win.show_error("A/B", f"Cannot compare these runs: {exc}")
            return None
        self.ab_view.presetKept.connect(self.keep_as_preset)
        self.ab_view.show()
        self.refresh()
        return self.ab_view

    def keep_as_preset(self, run, path: str | None = None) -> bool:
        """Apply ``run``'s method and parameters to the form and save them as a preset file."""
        from diffgui.app import presets

        self.win.method_panel.set_method(run.method)
        self.win.form.set_values(dict(run.params))
        if path is None:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save preset", f"run{run.run_id}.toml",
                                                            "Presets (*.toml)")
            if not path:
                return False
        return _attempt(self.win, "Cannot save the preset",
                        lambda: presets.save_preset(path, run.method, presets.persistable(run.method, run.params)),
                        f"run {run.run_id}'s settings applied to the form and saved to {path}")

    def ask_export(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export history", "history.csv", "CSV (*.csv)")
        if path:
            self.export(path)

    def export(self, path: str) -> bool:
        return _attempt(self.win, "Cannot export the history",
                        lambda: self.history.export_csv(path, overwrite=False), f"history written to {path}")


def _attempt(win, error_title: str, action, done_text: str) -> bool:
    """Do ``action()``; log ``done_text`` (True) or show why it failed (False)."""
    try:
        action()
    except Exception as exc:
        win.show_error(error_title, str(exc))
        return False
    win.append_log(done_text)
    return True


def install_history(win) -> HistoryWidget:
    """Add the run-history dock to the main window (history cleared with each new pair)."""
    history = RunHistory()
    widget = HistoryWidget(win, history)
    win.history = widget
    win.history_dock = win.add_dock(widget, "Run history", QtCore.Qt.DockWidgetArea.RightDockWidgetArea,
                                    name="dock_run_history")
    win.runFinished.connect(widget.add)

    def new_pair(pair):
        history.close()
        history.entries.clear()
        widget.refresh()
    win.pairLoaded.connect(new_pair)
    win.destroyed.connect(lambda *_: history.close())
    return widget
