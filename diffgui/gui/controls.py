"""Small control widgets of the main window: the display toolbar and the method panel."""

from __future__ import annotations

from PyQt6 import QtCore, QtWidgets

from diffgui.app import methods as registry
from diffgui.app.display import LIMIT_MODES, STRETCHES

from .params_form import ParamsForm

__all__ = ["DisplayToolbar", "MethodPanel", "KERNEL_MODES"]

#: Kernel panel modes: label -> grid size (0 = kernel at the cursor).
KERNEL_MODES = {"kernel at cursor": 0, "kernel grid 3x3": 3, "kernel grid 5x5": 5}
#: Panel layouts offered in the toolbar.
LAYOUT_MODES = {"main": "main + side", "grid": "grid"}


class DisplayToolbar(QtWidgets.QToolBar):
    """Limits, stretch, diverging range, grid columns and kernel mode.

    Signals
    -------
    optionsChanged(str, str, float)
        limits mode, stretch, nsigma.
    columnsChanged(int), kernelModeChanged(int)
    layoutChanged(str)
        ``'main'`` (one large panel) or ``'grid'``.
    """

    optionsChanged = QtCore.pyqtSignal(str, str, float)
    layoutChanged = QtCore.pyqtSignal(str)
    columnsChanged = QtCore.pyqtSignal(int)
    kernelModeChanged = QtCore.pyqtSignal(int)

    def __init__(self, parent=None, columns: int = 0):
        super().__init__("Display", parent)
        self.setObjectName("display_toolbar")
        self.limits = QtWidgets.QComboBox()
        self.limits.addItems(LIMIT_MODES)
        self.limits.setToolTip("Limits of science, template, convolved and noise panels")
        self.stretch = QtWidgets.QComboBox()
        self.stretch.addItems(STRETCHES)
        self.stretch.setToolTip("Stretch applied to every panel (diverging panels stretch symmetrically)")
        self.nsigma = QtWidgets.QDoubleSpinBox()
        self.nsigma.setRange(0.5, 1000)
        self.nsigma.setValue(5.0)
        self.nsigma.setSuffix(" σ")
        self.nsigma.setToolTip("Difference and S_corr limits: ± this many robust sigmas around 0")
        self.columns = QtWidgets.QSpinBox()
        self.columns.setRange(0, 8)
        self.columns.setSpecialValueText("auto")
        self.columns.setValue(columns)
        self.columns.setToolTip("Columns of the panel grid (auto: as large panels as the window allows)")
        self.kernel = QtWidgets.QComboBox()
        self.kernel.addItems(KERNEL_MODES)
        self.kernel.setToolTip("Kernel panel: kernel at the cursor or on a grid across the field")
        self.layout_mode = QtWidgets.QComboBox()
        for mode, text in LAYOUT_MODES.items():
            self.layout_mode.addItem(text, mode)
        self.layout_mode.setToolTip("Main: the difference large, the other panels beside it; grid: equal panels."
                                    " Double-click a panel to maximise it, again to restore.")
        for label, w in (("Limits", self.limits), ("Stretch", self.stretch), ("Diff range", self.nsigma),
                         ("Layout", self.layout_mode), ("Columns", self.columns), ("", self.kernel)):
            if label:
                self.addWidget(QtWidgets.QLabel(f" {label} "))
            self.addWidget(w)
        self.limits.currentTextChanged.connect(self._emit)
        self.stretch.currentTextChanged.connect(self._emit)
        self.nsigma.valueChanged.connect(self._emit)
        self.columns.valueChanged.connect(self.columnsChanged)
        self.layout_mode.currentIndexChanged.connect(lambda i: self.layoutChanged.emit(self.layout_mode.itemData(i)))
        self.kernel.currentTextChanged.connect(lambda t: self.kernelModeChanged.emit(KERNEL_MODES[t]))

    def _emit(self, *args) -> None:
        self.optionsChanged.emit(self.limits.currentText(), self.stretch.currentText(), self.nsigma.value())

    def set_layout_mode(self, mode: str) -> None:
        self.layout_mode.setCurrentIndex(self.layout_mode.findData(mode))

    def kernel_grid_size(self) -> int:
        return KERNEL_MODES[self.kernel.currentText()]


class MethodPanel(QtWidgets.QWidget):
    """Method chooser, generated parameter form, Reset/Run/Cancel buttons.

    Methods the registry reports unavailable are listed but disabled, with the reason
    as tooltip.

    Signals
    -------
    methodChanged(str), runRequested(), cancelRequested()
    """

    methodChanged = QtCore.pyqtSignal(str)
    runRequested = QtCore.pyqtSignal()
    cancelRequested = QtCore.pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(QtWidgets.QLabel("Method"))
        self.combo = QtWidgets.QComboBox()
        self.combo.setToolTip("Subtraction method (greyed out: not available in this installation)")
        row.addWidget(self.combo, 1)
        lay.addLayout(row)
        self.form = ParamsForm(self)
        lay.addWidget(self.form, 1)
        buttons = QtWidgets.QHBoxLayout()
        self.reset_btn = QtWidgets.QPushButton("Defaults")
        self.reset_btn.setToolTip("Reset every parameter of this method to its default")
        self.run_btn = QtWidgets.QPushButton("Run")
        self.run_btn.setToolTip("Run the subtraction (F5)")
        self.cancel_btn = QtWidgets.QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop the running subtraction (Esc)")
        self.cancel_btn.setEnabled(False)
        for b in (self.reset_btn, self.run_btn, self.cancel_btn):
            buttons.addWidget(b)
        lay.addLayout(buttons)
        self.reset_btn.clicked.connect(self.form.reset_defaults)
        self.run_btn.clicked.connect(self.runRequested)
        self.cancel_btn.clicked.connect(self.cancelRequested)
        self.combo.currentIndexChanged.connect(self._on_combo)
        self.form.validityChanged.connect(self._on_validity)
        self.populate()

    def populate(self) -> None:
        """(Re)list the registered methods; select the first available one."""
        self.combo.blockSignals(True)
        self.combo.clear()
        model = self.combo.model()
        first = None
        for i, info in enumerate(registry.all_methods()):
            ok, reason = info.availability()
            self.combo.addItem(info.label if ok else f"{info.label} (unavailable)", info.name)
            item = model.item(i)
            item.setEnabled(ok)
            item.setToolTip(reason or f"{info.label} is available")
            if ok and first is None:
                first = i
        self.combo.blockSignals(False)
        idx = first if first is not None else 0  # with nothing available, still show a form
        if self.combo.count():
            self.combo.setCurrentIndex(idx)
            self._on_combo(idx)

    def method(self) -> str | None:
        return self.combo.currentData()

    def set_method(self, name: str) -> None:
        """Select a method by registry name (InputError if unknown or unavailable)."""
        info = registry.get(name)
        ok, reason = info.availability()
        if not ok:
            from diffgui.engine.errors import InputError

            raise InputError(f"{info.label} cannot run here: {reason}")
        idx = self.combo.findData(info.name)
        self.combo.setCurrentIndex(idx)
        if self.form.method != info.name:
            self._on_combo(idx)

    def _on_combo(self, idx: int) -> None:
        name = self.combo.itemData(idx)
        if name is None:
            return
        self.form.set_method(name)
        self._on_validity(self.form.is_valid())
        self.methodChanged.emit(name)

    def _on_validity(self, ok: bool) -> None:
        name = self.method()
        available, reason = registry.get(name).availability() if name else (False, "no method")
        self.run_btn.setEnabled(ok and available)
        tip = "Run the subtraction (F5)" if ok else "Fix the fields marked red first"
        self.run_btn.setToolTip(tip if available else f"Cannot run: {reason}")

    def set_busy(self, busy: bool) -> None:
        self.cancel_btn.setEnabled(busy)
