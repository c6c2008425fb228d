"""Suggest settings: run :func:`diffgui.app.tuning.tune` in a thread and apply the best to the form (undoable)."""

from __future__ import annotations

import threading

from PyQt6 import QtCore, QtGui, QtWidgets

__all__ = ["TuneDialog", "open_tune_dialog"]


class _Relay(QtCore.QObject):
    line = QtCore.pyqtSignal(str)
    done = QtCore.pyqtSignal(object)
    failed = QtCore.pyqtSignal(str)


class TuneDialog(QtWidgets.QDialog):
    """Search the current method's settings on the window's pair within a time budget."""

    def __init__(self, win, budget: float = 60.0, parent=None):
        super().__init__(parent or win)
        self.win, self.result, self._previous = win, None, None
        self._stop = threading.Event()
        self.setWindowTitle("Suggest settings")
        self.budget = QtWidgets.QDoubleSpinBox()
        self.budget.setRange(1, 3600)
        self.budget.setValue(budget)
        self.budget.setSuffix(" s")
        self.regions = QtWidgets.QComboBox()
        for label, n in (("5 regions (corners, centre)", 5), ("9 regions (3 x 3)", 9), ("whole frame", 0)):
            self.regions.addItem(label, n)
        self.regions.setToolTip("Trials are scored on regions that sample the field (faster on large "
                                "frames); the winner is confirmed on the whole frame")
        self.text = QtWidgets.QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.start_button = QtWidgets.QPushButton("Start")
        self.apply_button = QtWidgets.QPushButton("Apply best to the form")
        self.undo_button = QtWidgets.QPushButton("Undo apply")
        self.apply_button.setEnabled(False)
        self.undo_button.setEnabled(False)
        self.start_button.clicked.connect(self.start)
        self.apply_button.clicked.connect(self.apply_best)
        self.undo_button.clicked.connect(self.undo)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Budget"))
        top.addWidget(self.budget)
        top.addWidget(QtWidgets.QLabel("Score on"))
        top.addWidget(self.regions)
        top.addWidget(self.start_button)
        top.addStretch(1)
        bottom = QtWidgets.QHBoxLayout()
        bottom.addWidget(self.apply_button)
        bottom.addWidget(self.undo_button)
        lay = QtWidgets.QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.text, 1)
        lay.addLayout(bottom)
        self.resize(900, 480)
        self.relay = _Relay()
        self.relay.line.connect(self.text.appendPlainText)
        self.relay.done.connect(self._done)
        self.relay.failed.connect(self._failed)
        self.thread = None

    def start(self) -> bool:
        """Start the search with the form's method and values (a message when it cannot)."""
        if self.win.pair is None:
            self.win.show_error("Suggest settings", "Open a pair first.")
            return False
        method = self.win.current_method()
        try:
            base = self.win.current_params()
        except Exception as exc:
            self.win.show_error("Invalid parameters", str(exc))
            return False
        from diffgui.app.tuning import tune

        pair, budget, regions = self.win.pair, float(self.budget.value()), int(self.regions.currentData())
        self.start_button.setEnabled(False)
        self.text.appendPlainText(f"tuning {method} within {budget:g} s ...")

        def work():
            try:
                res = tune(pair, method, base, budget=budget, verbose=self.relay.line.emit,
                           cancel=self._stop.is_set, regions=regions)
                self.relay.done.emit(res)
            except Exception as exc:
                self.relay.failed.emit(str(exc))
        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()
        return True

    def _done(self, res) -> None:
        from diffgui.app.tuning import describe_changes, diff_params, format_table

        self.result = res
        self.text.appendPlainText(format_table(res))
        best = describe_changes(diff_params(res.base, res.best.params))
        self.text.appendPlainText(f"best: {best}" if res.improved else "best: the current settings")
        self.apply_button.setEnabled(res.improved)
        self.start_button.setEnabled(True)

    def _failed(self, message: str) -> None:
        self.text.appendPlainText(f"cannot tune: {message}")
        self.start_button.setEnabled(True)
        self.win.show_error("Suggest settings", message)

    def apply_best(self) -> None:
        """Put the best settings in the form (the previous values are kept for Undo)."""
        if self.result is None:
            return
        self._previous = self.win.form.values()
        self.win.form.set_values({k: v for k, v in self.result.best.params.items() if k != "obj"})
        self.undo_button.setEnabled(True)
        self.win.append_log("suggested settings applied to the form (Undo in the Suggest settings dialog)")

    def undo(self) -> None:
        if self._previous is not None:
            self.win.form.set_values(self._previous)
            self._previous = None
            self.undo_button.setEnabled(False)

    def closeEvent(self, ev):  # noqa: N802
        self._stop.set()
        super().closeEvent(ev)


def open_tune_dialog(win, budget: float = 60.0) -> TuneDialog:
    dlg = TuneDialog(win, budget)
    win.tune_dialog = dlg
    dlg.show()
    return dlg
