"""The vetting view: a sortable candidate table with thumbnails, large cutouts and labelling keys.

Keys (shown in the buttons' tooltips and in the help overlay, ``?``):
R real, B bogus, S skip, U undo, N/P next/previous, ? help. Each label is written to
the label file at once (:class:`diffgui.app.candidates.LabelStore`), then the view moves
to the next item. The keys come from the key table (:mod:`diffgui.gui.keys`) and work
whatever widget of the window has the focus while this view is shown (an application
event filter), except in fields where text is typed.

The view shows any :class:`~diffgui.app.candidates.VettingSource`: candidates on the
current pair (selecting one emits :attr:`VettingView.centerRequested`) or a cutout
collection (alert triplets), whose machine score is a sortable column.
"""

from __future__ import annotations

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from diffgui.app.candidates import LABELS

from . import keys
from .candidate_table import THUMB, CandidateTableModel, SortFilterProxy, format_cell, strip_pixmap

__all__ = ["VettingView", "KEY_HELP"]

_BIG = 150
#: (keys, text) rows of the vetting help, generated from the key table.
KEY_HELP = keys.help_rows("vetting") + [(k.label, k.text) for k in keys.KEYS
                                        if k.action in ("centre", "sort")]


def _breakable(path: str) -> str:
    """A path that a word-wrapped label can break after each ``/`` (no clipped file names)."""
    import html

    return html.escape(str(path)).replace("/", "/&#8203;").replace("_", "_&#8203;")


def _edits_text(widget) -> bool:
    """True for a widget where letters are typed as text (an editable line or text field,
    but not a spin box's, where letters mean nothing)."""
    if isinstance(widget, QtWidgets.QLineEdit):
        parent = widget.parent()
        return not widget.isReadOnly() and not isinstance(parent, QtWidgets.QAbstractSpinBox)
    if isinstance(widget, (QtWidgets.QTextEdit, QtWidgets.QPlainTextEdit)):
        return not widget.isReadOnly()
    return False


# ---- view ------------------------------------------------------------------------------

class _HelpOverlay(QtWidgets.QLabel):
    def __init__(self, parent):
        super().__init__(parent)
        rows = "".join(f"<tr><td align='right' style='padding-right:14px'><b>{k}</b></td><td>{t}</td></tr>"
                       for k, t in KEY_HELP)
        self.setText(f"<h3>Vetting keys</h3><table>{rows}</table><p>Labels are saved after every key."
                     "<br>They work whatever has the focus while this dock is shown."
                     "<br>Click, press ? or Esc to close.</p>")
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.setWordWrap(True)  # a narrow dock wraps the help instead of cutting it off
        self.setStyleSheet("background: rgba(20, 20, 24, 225); color: #f0f0f0; font-size: 11pt;"
                           "border: 1px solid #888; border-radius: 6px; padding: 12px;")
        self.setVisible(False)

    def mousePressEvent(self, ev):  # noqa: N802
        self.setVisible(False)


class VettingView(QtWidgets.QWidget):
    """Candidate or collection table with labelling keys.

    Signals
    -------
    centerRequested(float, float)
        The selected item is at pixel ``(x, y)`` of the pair.
    labelChanged(str, object)
        An item's key and its new label (None after undo to nothing).
    findRequested(float)
        The user asked to (re)find candidates at this threshold.
    exportRequested(str)
        ``'csv'`` or ``'regions'``.
    openCollectionRequested()
    exportsChanged(bool, bool)
        Whether a CSV / DS9 export has anything to write.
    """

    centerRequested = QtCore.pyqtSignal(float, float)
    labelChanged = QtCore.pyqtSignal(str, object)
    findRequested = QtCore.pyqtSignal(float)
    exportRequested = QtCore.pyqtSignal(str)
    openCollectionRequested = QtCore.pyqtSignal()
    exportsChanged = QtCore.pyqtSignal(bool, bool)  # CSV, DS9 regions possible

    def __init__(self, parent=None):
        super().__init__(parent)
        self.source = None
        self.store = None
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.setSpacing(4)
        top = QtWidgets.QHBoxLayout()
        self.title = QtWidgets.QLabel("<i>no candidates: run a subtraction, or open a cutout collection</i>")
        self.title.setWordWrap(True)  # long titles wrap instead of being clipped
        self.title.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        lay.addWidget(self.title)  # its own row: long titles wrap over the dock's width
        self.threshold = QtWidgets.QDoubleSpinBox()
        self.threshold.setRange(2.0, 100.0)
        self.threshold.setSingleStep(0.5)
        self.threshold.setValue(5.0)
        self.threshold.setSuffix(" σ")
        self.threshold.setToolTip("Detection threshold on S_corr or the matched-filter S/N of the difference")
        top.addWidget(self.threshold)
        self.find_btn = self._button(top, "Find", "Find candidates on the current result at this threshold",
                                     lambda: self.findRequested.emit(self.threshold.value()))
        self.unlabelled = QtWidgets.QCheckBox("Unlabelled only")
        self.unlabelled.setToolTip("Hide the items that already have a label")
        self.unlabelled.toggled.connect(self.set_unlabelled_only)
        top.addWidget(self.unlabelled)
        lay.addLayout(top)
        tools = QtWidgets.QHBoxLayout()
        self.buttons = {}
        self.buttons["csv"] = self._button(tools, "Export CSV…", "Export candidates and labels as CSV",
                                           lambda: self.exportRequested.emit("csv"))
        self.buttons["regions"] = self._button(tools, "Export DS9…", "Export candidates as a DS9 region file",
                                               lambda: self.exportRequested.emit("regions"))
        tools.addStretch(1)
        self.buttons["collection"] = self._button(tools, "Open collection…",
                                                  "Vet a cutout collection (alert triplets .npz, FITS cutouts)",
                                                  self.openCollectionRequested.emit)
        lay.addLayout(tools)

        self.table = QtWidgets.QTableView()
        self.model = CandidateTableModel(self)
        self.proxy = SortFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setIconSize(QtCore.QSize(4 * (THUMB + 2), THUMB))
        self.table.verticalHeader().setDefaultSectionSize(THUMB + 4)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.horizontalHeader().setResizeContentsPrecision(50)  # widths from the first 50 rows
        self.table.setAlternatingRowColors(True)
        self.table.selectionModel().currentRowChanged.connect(self._on_current)
        self.table.clicked.connect(lambda idx: self._center_current())  # a click on the current row too
        app = QtWidgets.QApplication.instance()
        if app is not None:
            app.installEventFilter(self)  # vetting keys whatever widget has the focus
            app.aboutToQuit.connect(self.detach_keys)
        lay.addWidget(self.table, 3)

        self.big = QtWidgets.QLabel()
        self.big.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.big.setMinimumHeight(_BIG + 22)
        lay.addWidget(self.big)
        self.info = QtWidgets.QLabel("")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)

        bar = QtWidgets.QHBoxLayout()
        for name, text, tip in (("real", "Real", "Label real (R)"), ("bogus", "Bogus", "Label bogus (B)"),
                                ("skip", "Skip", "Skip: no decision (S)"), ("undo", "Undo", "Undo the last label (U)"),
                                ("previous", "◀ Prev", "Previous candidate (P)"),
                                ("next", "Next ▶", "Next candidate (N)"),
                                ("help", "?", "Show the vetting keys (? or H)")):
            self.buttons[name] = self._button(bar, text, tip, lambda checked=False, n=name: self.command(n))
        lay.addLayout(bar)
        for b, color in (("real", "#2ea043"), ("bogus", "#cf222e"), ("skip", "#bf8700")):
            self.buttons[b].setStyleSheet(f"QPushButton {{ color: {color}; font-weight: bold; }}")
        self.overlay = _HelpOverlay(self)
        self.buttons["csv"].setEnabled(False)  # nothing to export yet
        self.buttons["regions"].setEnabled(False)
        self._update_info()

    def _button(self, layout, text, tip, slot):
        b = QtWidgets.QPushButton(text)
        b.setToolTip(tip)
        b.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        b.clicked.connect(slot)
        layout.addWidget(b)
        return b

    # ---- content --------------------------------------------------------------------
    def set_source(self, source, store, title: str | None = None) -> None:
        """Show ``source`` (CandidateSet or CutoutCollection) with labels from ``store``."""
        self.source, self.store = source, store
        self.model.set_source(source, store)
        self.title.setText(f"<b>{title or getattr(source, 'title', '')}</b>" if source is not None else "")
        is_pair = source is not None and len(source) > 0 and source.position(0) is not None
        collection = source is not None and not is_pair and len(source) > 0
        self.find_btn.setVisible(not collection)  # thresholds mean nothing for ready-made cutouts
        self.threshold.setVisible(not collection)
        self.buttons["regions"].setEnabled(bool(is_pair))
        if source is not None:
            default = getattr(source, "score_column", None) or ("snr" if "snr" in self.model.columns else None)
            if default in self.model.columns:
                self.table.sortByColumn(self.model.columns.index(default), QtCore.Qt.SortOrder.DescendingOrder)
            # Not resizeColumnsToContents: that would render the thumbnails of every row
            # (about 5 ms each) in the GUI thread; the cutout column's width is known.
            self.table.setColumnWidth(0, len(source.roles) * (THUMB + 2) + 8)
            for col in range(1, self.model.columnCount()):
                self.table.resizeColumnToContents(col)
        self.buttons["csv"].setEnabled(source is not None and len(source) > 0)
        self.exportsChanged.emit(self.buttons["csv"].isEnabled(), self.buttons["regions"].isEnabled())
        self._update_info()
        if self.proxy.rowCount() > 0:
            # the first row is made current without moving the panels: the view is kept
            # across runs, and zooms to a candidate only when the user selects one
            self._quiet = True
            try:
                self.select_proxy_row(0)
            finally:
                self._quiet = False
        else:
            self.big.clear()

    def clear(self, message: str = "") -> None:
        self.set_source(None, None)
        self.title.setText(f"<i>{message}</i>" if message else "")

    def set_unlabelled_only(self, on: bool) -> None:
        key = self.current_key()
        self.proxy.unlabelled_only = bool(on)
        self.proxy.invalidateFilter()
        if self.unlabelled.isChecked() != bool(on):
            self.unlabelled.setChecked(bool(on))
        if not self._select_key(key) and self.proxy.rowCount():
            self.select_proxy_row(0)
        self._update_info()

    # ---- selection ------------------------------------------------------------------
    def current_row(self):
        """Row of the current item in the source (None when nothing is selected)."""
        idx = self.table.currentIndex()
        return self.proxy.mapToSource(idx).row() if idx.isValid() else None

    def current_key(self):
        row = self.current_row()
        return self.model.key(row) if row is not None else None

    def select_proxy_row(self, prow: int) -> None:
        if not 0 <= prow < self.proxy.rowCount():
            return
        idx = self.proxy.index(prow, 1)
        again = self.table.currentIndex().row() == prow
        self.table.setCurrentIndex(idx)
        self.table.scrollTo(idx)
        if again:
            self._center_current()  # selecting the current row again still centres on it

    def _center_current(self) -> None:
        row = self.current_row()
        if row is None or self.source is None or getattr(self, "_quiet", False):
            return
        pos = self.source.position(row)
        if pos is not None:
            self.centerRequested.emit(float(pos[0]), float(pos[1]))

    def _select_key(self, key) -> bool:
        if key is None or self.source is None:
            return False
        try:
            row = self.model._keys.index(key)
        except ValueError:
            return False
        pidx = self.proxy.mapFromSource(self.model.index(row, 1))
        if not pidx.isValid():
            return False
        self.select_proxy_row(pidx.row())
        return True

    def _on_current(self, current, previous) -> None:
        row = self.current_row()
        if row is None or self.source is None:
            return
        self._show_big(row)
        self._center_current()
        self._update_info()

    def _show_big(self, row: int) -> None:
        stamps = self.source.cutouts(row)
        roles = self.source.roles
        # as large as the dock's width allows (never cut off at the right edge)
        size = int(max(60, min(_BIG, (self.width() - 16) // max(1, len(roles)) - 6)))
        pix = strip_pixmap(stamps, roles, size, gap=6)
        canvas = QtGui.QPixmap(pix.width(), pix.height() + 18)
        canvas.fill(self.palette().color(QtGui.QPalette.ColorRole.Window))
        p = QtGui.QPainter(canvas)
        try:
            self._paint_big(p, pix, roles, size)
        finally:
            p.end()
        self.big.setPixmap(canvas)

    def _paint_big(self, p, pix, roles, size: int = _BIG) -> None:
        p.drawPixmap(0, 18, pix)
        tick = QtGui.QPen(QtGui.QColor(255, 210, 0), 2)
        c, g, L = size / 2, 7, 9
        for i in range(len(roles)):
            x0 = i * (size + 6)
            p.setPen(tick)
            for a, b in (((c - g - L, c), (c - g, c)), ((c + g, c), (c + g + L, c)),
                         ((c, c - g - L), (c, c - g)), ((c, c + g), (c, c + g + L))):
                p.drawLine(QtCore.QPointF(x0 + a[0], 18 + a[1]), QtCore.QPointF(x0 + b[0], 18 + b[1]))
        p.setPen(self.palette().color(QtGui.QPalette.ColorRole.WindowText))
        for i, role in enumerate(roles):
            p.drawText(QtCore.QRect(i * (size + 6), 0, size, 16), QtCore.Qt.AlignmentFlag.AlignCenter,
                       {"science": "science", "template": "template", "diff": "difference", "scorr": "S_corr"}[role])

    # ---- commands -------------------------------------------------------------------
    def command(self, name: str) -> None:
        """Run a vetting command: 'real', 'bogus', 'skip', 'undo', 'next', 'previous', 'help'."""
        if name == "help":
            self.toggle_help()
        elif name in LABELS:
            self.set_label(name)
        elif name == "undo":
            self.undo()
        elif name in ("next", "previous"):
            self.step(1 if name == "next" else -1)

    def step(self, delta: int) -> None:
        if self.proxy.rowCount() == 0:
            return
        idx = self.table.currentIndex()
        prow = idx.row() if idx.isValid() else -1
        self.select_proxy_row(max(0, min(self.proxy.rowCount() - 1, prow + delta)))

    def set_label(self, label) -> None:
        """Label the current item, save, and move to the next one."""
        row = self.current_row()
        if row is None or self.store is None:
            return
        prow = self.table.currentIndex().row()
        key = self.model.key(row)
        self.store.set(key, label, self.source.record(row))
        self.model.label_changed(row)
        self.labelChanged.emit(key, label)
        if self.proxy.unlabelled_only:
            self.proxy.invalidateFilter()  # the labelled row leaves; the next one takes its place
            self.select_proxy_row(min(prow, self.proxy.rowCount() - 1))
        else:
            self.select_proxy_row(min(prow + 1, self.proxy.rowCount() - 1))
        self._update_info()

    def undo(self) -> None:
        if self.store is None:
            return
        key = self.store.undo()
        if key is None:
            return
        try:
            row = self.model._keys.index(key)
        except ValueError:
            row = None
        if row is not None:
            self.model.label_changed(row)
            self.proxy.invalidateFilter()
            self._select_key(key)
        self.labelChanged.emit(key, self.store.label(key))
        self._update_info()

    def toggle_help(self, on: bool | None = None) -> None:
        show = not self.overlay.isVisible() if on is None else bool(on)
        if show:
            self._place_overlay()
            self.overlay.raise_()
        self.overlay.setVisible(show)

    def _place_overlay(self) -> None:
        r = self.rect().adjusted(12, 40, -12, -12)
        hint = self.overlay.sizeHint()
        w = min(r.width(), max(hint.width(), 360))
        h = min(r.height(), max(hint.height(), self.overlay.heightForWidth(w)))
        self.overlay.setGeometry(r.x() + (r.width() - w) // 2, r.y() + (r.height() - h) // 3, w, h)

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        if self.overlay.isVisible():
            self._place_overlay()
        row = self.current_row()
        if row is not None and self.source is not None and ev.oldSize().width() != ev.size().width():
            self._show_big(row)

    def eventFilter(self, obj, ev):  # noqa: N802
        """Vetting keys for every widget of this window while the view is shown (installed on
        the application): the focus may be on an image, a panel, the form or the table."""
        t = ev.type()
        if t not in (QtCore.QEvent.Type.ShortcutOverride, QtCore.QEvent.Type.KeyPress):
            return False
        if not isinstance(obj, QtWidgets.QWidget) or not self._keys_active_for(obj):
            return False
        cmd = keys.vetting_command(ev)
        if cmd == "hide-help" and not self.overlay.isVisible():
            cmd = None  # Esc then cancels the run, as everywhere else
        if cmd is None:
            return False
        ev.accept()  # ShortcutOverride accepted: the key reaches us, not a window shortcut
        if t == QtCore.QEvent.Type.KeyPress:
            if cmd == "hide-help":
                self.toggle_help(False)
            else:
                self.command(cmd)
        return True

    def detach_keys(self) -> None:
        """Stop filtering the application's key events (the window closes): a filter left
        installed would see the events of objects torn down after this one."""
        app = QtWidgets.QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)

    def _keys_active_for(self, obj) -> bool:
        if not self.isVisible() or obj.window() is not self.window():
            return False
        if self.overlay.isVisible():
            return True
        return not _edits_text(obj)

    # ---- status ---------------------------------------------------------------------
    def _update_info(self) -> None:
        if self.source is None:
            self.info.setText("")
            return
        keys = set(self.model._keys)
        c = self.store.counts(keys) if self.store is not None else dict.fromkeys(LABELS, 0)
        n = len(self.source)
        done = sum(c.values())
        parts = [f"{n} items, {done} labelled ({c['real']} real, {c['bogus']} bogus, {c['skip']} skip)"]
        if self.proxy.unlabelled_only:
            parts.append(f"{self.proxy.rowCount()} shown")
        row = self.current_row()
        if row is not None:
            parts.append(self._describe(row))
        if self.store is not None:
            parts.append(f"<span style='color:gray'>labels: {_breakable(self.store.path)}</span>")
        self.info.setText("<br>".join(parts))

    def _describe(self, row: int) -> str:
        t = self.source.table
        r = t[row]
        bits = []
        for name in ("id", "snr", "sign", "x", "y", "fwhm", "dipole", self.source.score_column):
            if name and name in t.colnames:
                v = r[name]
                if isinstance(v, (float, np.floating)) and not np.isfinite(v):
                    continue  # not measured: left out rather than an empty "fwhm="
                text = ("+" if v > 0 else "-") if name == "sign" else format_cell(v)
                bits.append(f"{'S/N' if name == 'snr' else name}={text}")
        lab = self.store.label(self.model.key(row)) if self.store is not None else None
        return f"<b>{' '.join(bits)}</b>  {('label: ' + lab) if lab else 'unlabelled'}"
