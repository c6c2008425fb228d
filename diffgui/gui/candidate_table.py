"""The candidate table model and the cutout thumbnails of the vetting view (Qt, no widgets).

:class:`CandidateTableModel` shows any :class:`~diffgui.app.candidates.VettingSource`:
a thumbnail strip (science, template, difference, S_corr), the label, then the source's
display columns; :data:`SORT_ROLE` gives numeric sort keys so every feature sorts as a
number. Cutouts are drawn with row 0 at the bottom, as in the image panels; science and
template each get zscale limits, the difference and S_corr a diverging map symmetric
about zero.
"""

from __future__ import annotations

import numpy as np
from PyQt6 import QtCore, QtGui

from diffgui.app.candidates import COLUMN_HELP, LABELS

from .imaging import colormap_for, make_lut

__all__ = ["CandidateTableModel", "SortFilterProxy", "stamp_levels", "stamp_image", "strip_pixmap", "format_cell",
           "SORT_ROLE", "THUMB"]

SORT_ROLE = QtCore.Qt.ItemDataRole.UserRole + 1
#: Side of one thumbnail in the table (px).
THUMB = 46
_LABEL_COLORS = {"real": QtGui.QColor(46, 160, 67), "bogus": QtGui.QColor(207, 34, 46),
                 "skip": QtGui.QColor(191, 135, 0)}
_ROLE_SHORT = {"science": "sci", "template": "ref", "diff": "diff", "scorr": "S_corr"}


# ---- stamps ----------------------------------------------------------------------------

def _robust(values):
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def stamp_levels(stamps: dict) -> dict:
    """Display levels of a set of cutouts: zscale for science and template (each its own:
    their skies and scales differ), symmetric about 0 for the difference and S_corr (at
    least 5 robust sigma, so noise stays pale and signed structure shows)."""
    from diffgui.app.display import zscale

    out = {}
    for r in ("science", "template"):
        if r in stamps:
            v = np.asarray(stamps[r], float).ravel()
            v = v[np.isfinite(v)]
            out[r] = zscale(v) if v.size else (0.0, 1.0)
    for r in ("diff", "scorr"):
        if r in stamps:
            v = np.asarray(stamps[r], float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                out[r] = (-1.0, 1.0)
                continue
            a = max(5.0 * _robust(v), float(np.percentile(np.abs(v), 99.5)), 1e-12)
            out[r] = (-a, a)
    return out


def stamp_image(arr, levels, role: str, size: int) -> QtGui.QImage:
    """A ``size x size`` RGB image of a cutout (row 0 at the bottom, as in the panels)."""
    a = np.asarray(arr, dtype=np.float64)
    lo, hi = levels
    t = np.clip((a - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    idx = np.where(np.isfinite(t), np.rint(t * 255), 0).astype(np.uint8)
    lut = make_lut(colormap_for(role), "linear", role in ("diff", "scorr"))
    rgb = lut[idx[::-1], :3]
    rgb[~np.isfinite(a[::-1])] = (60, 60, 70)
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    img = QtGui.QImage(rgb.data, w, h, 3 * w, QtGui.QImage.Format.Format_RGB888).copy()
    return img.scaled(size, size, QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                      QtCore.Qt.TransformationMode.FastTransformation)


def strip_pixmap(stamps: dict, roles, size: int, gap: int = 2) -> QtGui.QPixmap:
    """Cutouts side by side in one pixmap."""
    levels = stamp_levels(stamps)
    pix = QtGui.QPixmap(len(roles) * (size + gap) - gap, size)
    pix.fill(QtGui.QColor(30, 30, 34))
    images = [stamp_image(stamps[role], levels[role], role, size) for role in roles]
    painter = QtGui.QPainter(pix)
    try:
        for i, img in enumerate(images):
            painter.drawImage(i * (size + gap), 0, img)
    finally:
        painter.end()  # a pixmap destroyed while painted on corrupts Qt's paint state
    return pix


# ---- table model -----------------------------------------------------------------------

def format_cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"  # not measured (a blank cell reads as a display fault)
        a = abs(v)
        return f"{v:.3f}" if a < 10 else (f"{v:.1f}" if a < 1e5 else f"{v:.4g}")
    if isinstance(v, (int, np.integer)) and abs(int(v)) > 10 ** 9:
        return str(int(v))
    return str(v)


class CandidateTableModel(QtCore.QAbstractTableModel):
    """Rows of a vetting source: thumbnails, label, then the source's display columns."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.source = None
        self.store = None
        self.columns: list = []
        self._thumbs: dict = {}
        self._keys: list = []
        self._n = 0

    def set_source(self, source, store) -> None:
        self.beginResetModel()
        self.source, self.store = source, store
        self.columns = ["cutouts", "label"] + ([c for c in source.display_columns if c in source.table.colnames]
                                               if source is not None else [])
        self._thumbs = {}
        self._keys = source.keys() if source is not None else []
        self._n = len(self._keys)  # rowCount is asked thousands of times by the view
        self._cols = {c: np.asarray(source.table[c]) for c in self.columns[2:]} if source is not None else {}
        self.endResetModel()

    def rowCount(self, parent=QtCore.QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() or self.source is None else self._n

    def columnCount(self, parent=QtCore.QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else len(self.columns)

    def key(self, row: int) -> str:
        return self._keys[row]

    def label(self, row: int):
        return self.store.label(self._keys[row]) if self.store is not None else None

    def headerData(self, section, orientation, role=QtCore.Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != QtCore.Qt.Orientation.Horizontal or section >= len(self.columns):
            return None
        name = self.columns[section]
        if role == QtCore.Qt.ItemDataRole.DisplayRole:
            if name == "cutouts" and self.source is not None:
                return "  ".join(_ROLE_SHORT.get(r, r) for r in self.source.roles)
            return "S/N" if name == "snr" else name
        if role == QtCore.Qt.ItemDataRole.ToolTipRole:
            if name == self.source.score_column:
                return f"{name}: the machine's real/bogus score (an opinion, not truth)"
            return COLUMN_HELP.get(name, name)
        return None

    def data(self, index, role=QtCore.Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or self.source is None:
            return None
        row, name = index.row(), self.columns[index.column()]
        if name == "cutouts":
            if role == QtCore.Qt.ItemDataRole.DecorationRole:
                pix = self._thumbs.get(row)
                if pix is None:
                    pix = strip_pixmap(self.source.cutouts(row), self.source.roles, THUMB)
                    self._thumbs[row] = pix
                return pix
            if role == SORT_ROLE:
                return float(row)
            return None
        if name == "label":
            lab = self.label(row)
            if role == QtCore.Qt.ItemDataRole.DisplayRole:
                return lab or ""
            if role == SORT_ROLE:
                return LABELS.index(lab) if lab in LABELS else len(LABELS)
            if role == QtCore.Qt.ItemDataRole.BackgroundRole and lab in _LABEL_COLORS:
                return QtGui.QBrush(_LABEL_COLORS[lab])   # other tools' labels: shown as text
            if role == QtCore.Qt.ItemDataRole.ForegroundRole and lab in _LABEL_COLORS:
                return QtGui.QBrush(QtGui.QColor("white"))
            if role == QtCore.Qt.ItemDataRole.TextAlignmentRole:
                return QtCore.Qt.AlignmentFlag.AlignCenter
            return None
        v = self._cols[name][row]
        if role == QtCore.Qt.ItemDataRole.DisplayRole:
            return ("+" if v > 0 else "-") if name == "sign" else format_cell(v)
        if role == SORT_ROLE:
            if isinstance(v, (np.number, int, float)) and not isinstance(v, bool):
                f = float(v)
                return f if np.isfinite(f) else float("inf")
            return str(v)
        if role == QtCore.Qt.ItemDataRole.TextAlignmentRole:
            return QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter
        return None

    def label_changed(self, row: int) -> None:
        col = self.columns.index("label")
        idx = self.index(row, col)
        self.dataChanged.emit(idx, idx)


class SortFilterProxy(QtCore.QSortFilterProxyModel):
    """Sorts by :data:`SORT_ROLE`; with ``unlabelled_only`` hides labelled rows."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.unlabelled_only = False
        self.setSortRole(SORT_ROLE)

    def filterAcceptsRow(self, row, parent):  # noqa: N802
        if not self.unlabelled_only:
            return True
        return self.sourceModel().label(row) is None

    def lessThan(self, left, right):  # noqa: N802
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if isinstance(a, str) or isinstance(b, str):
            return str(a) < str(b)
        return (a if a is not None else float("inf")) < (b if b is not None else float("inf"))
