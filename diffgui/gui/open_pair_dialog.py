"""File > Open pair: the science image, the template, and optional noise maps and masks.

Every field takes a file name with an optional ``[N]`` or ``[EXTNAME]`` HDU suffix
(``frame.fits[ERR]``); the optional maps default to the companion extensions of the
image files (``ERR``/``VAR``/``MASK``/``DQ``...) as :func:`diffgui.app.pair.load_pair`
finds them.
"""

from __future__ import annotations

import os

from PyQt6 import QtWidgets

__all__ = ["OpenPairDialog", "FIELDS"]

_FITS_FILTER = "FITS images (*.fits *.fit *.fts *.fits.fz *.fz *.fits.gz);;All files (*)"

#: ``(key, label, required)``; the keys are :func:`~diffgui.app.pair.load_pair` arguments.
FIELDS = (
    ("science", "Science image", True),
    ("template", "Template", True),
    ("err", "Science noise map (sigma)", False),
    ("template_err", "Template noise map (sigma)", False),
    ("mask", "Science mask (non-zero = bad)", False),
    ("template_mask", "Template mask", False),
)


class OpenPairDialog(QtWidgets.QDialog):
    """Ask for the pair's files; :meth:`values` gives ``load_pair`` keywords."""

    def __init__(self, parent=None, start_dir: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Open pair")
        self.start_dir = start_dir
        self.edits = {}
        form = QtWidgets.QFormLayout()
        for key, label, required in FIELDS:
            edit = QtWidgets.QLineEdit(self)
            edit.setObjectName(f"open_{key}")
            edit.setPlaceholderText("required" if required else "optional: from the image file's extensions")
            edit.setToolTip("A FITS file; append [N] or [EXTNAME] to pick an HDU, e.g. frame.fits[ERR]")
            browse = QtWidgets.QPushButton("Browse...", self)
            browse.clicked.connect(lambda checked=False, k=key, lab=label: self._browse(k, lab))
            row = QtWidgets.QHBoxLayout()
            row.addWidget(edit, 1)
            row.addWidget(browse)
            form.addRow(label, row)
            self.edits[key] = edit
        buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Open | QtWidgets.QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        self.message = QtWidgets.QLabel("", self)
        self.message.setWordWrap(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(buttons)
        self.resize(640, self.sizeHint().height())

    def _browse(self, key: str, label: str) -> None:
        current = self.edits[key].text().strip()
        start = os.path.dirname(current) if current else (self._first_dir() or self.start_dir)
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, label, start, _FITS_FILTER)
        if path:
            self.edits[key].setText(path)

    def _first_dir(self) -> str:
        sci = self.edits["science"].text().strip()
        return os.path.dirname(sci) if sci else ""

    def values(self) -> dict:
        """``{'science': ..., 'template': ..., 'err': ...}`` with the optional fields that are filled."""
        out = {}
        for key, _, required in FIELDS:
            text = self.edits[key].text().strip()
            if text or required:
                out[key] = text
        return out

    def _accept(self) -> None:
        missing = [label for key, label, required in FIELDS if required and not self.edits[key].text().strip()]
        if missing:
            self.message.setText("Give the " + " and the ".join(m.lower() for m in missing) + ".")
            return
        self.accept()
