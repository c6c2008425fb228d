"""Field diagnostics dialog: PSF and flux-ratio maps of the pair with plain advice."""

from __future__ import annotations

import numpy as np
from PyQt6 import QtCore, QtWidgets

from diffgui.engine.common.diagnostics import diagnose_field

from .scorecard_dock import _MapTable, _tile_colour

__all__ = ["DiagnosticsDialog", "show_diagnostics"]

_TITLES = {"science_fwhm": "Science FWHM (px)", "template_fwhm": "Template FWHM (px)",
           "science_ellipticity": "Science ellipticity", "template_ellipticity": "Template ellipticity",
           "flux_ratio": "Flux ratio science / template", "count": "Matched stars"}


def _relative_colour(values):
    v = np.asarray(values, float)
    med = np.nanmedian(v) if np.isfinite(v).any() else 1.0
    return lambda x: _tile_colour(0.67 + 4 * abs(x / med - 1) if med else np.nan)


class DiagnosticsDialog(QtWidgets.QDialog):
    """Shows a :class:`~diffgui.engine.common.diagnostics.FieldDiagnostics` (top of a map = top of the image)."""

    def __init__(self, diag, name: str = "", parent=None):
        super().__init__(parent)
        self.diag = diag
        self.setWindowTitle(f"Field diagnostics {name}".strip())
        self.advice = QtWidgets.QLabel("\n\n".join(diag.advice))
        self.advice.setWordWrap(True)
        self.advice.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        grid = QtWidgets.QGridLayout()
        self.tables = {}
        for k, key in enumerate(_TITLES):
            box = QtWidgets.QVBoxLayout()
            box.addWidget(QtWidgets.QLabel(_TITLES[key]))
            tab = _MapTable(_TITLES[key])
            m = diag.maps[key]
            if key == "count":
                tab.show_map(m, lambda x: _tile_colour(0.67), fmt="{:.0f}")
            elif "ellipticity" in key:
                tab.show_map(m, lambda x: _tile_colour(0.67 + 6 * x), fmt="{:.2f}")
            else:
                tab.show_map(m, _relative_colour(m), fmt="{:.3g}")
            box.addWidget(tab)
            self.tables[key] = tab
            grid.addLayout(box, k // 3, k % 3)
        lay = QtWidgets.QVBoxLayout(self)
        head = QtWidgets.QLabel(f"{diag.n_matched} stars matched in both images; maps are tile medians.")
        lay.addWidget(head)
        lay.addWidget(self.advice)
        lay.addLayout(grid, 1)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        lay.addWidget(buttons)
        self.resize(720, 520)


def show_diagnostics(win, grid: int = 3):
    """Diagnose the window's pair and show the dialog; a clear message when it cannot."""
    if win.pair is None:
        win.show_error("No pair", "Open a pair first: the diagnostics measure its stars.")
        return None
    QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)
    try:
        inp = win.pair.engine_inputs()
        diag = diagnose_field(inp["image"], inp["template"], inp.get("mask"), inp.get("template_mask"),
                              grid=grid)
    except Exception as exc:
        QtWidgets.QApplication.restoreOverrideCursor()
        win.show_error("Cannot diagnose the field", str(exc))
        return None
    QtWidgets.QApplication.restoreOverrideCursor()
    dlg = DiagnosticsDialog(diag, getattr(win.pair, "name", ""), win)
    win.diagnostics_dialog = dlg
    dlg.show()
    return dlg
