"""One image panel (view box, image, crosshair, title) and the colour tables the panels use.

Follows the pyqtgraph performance rules of ux-reference.md section 3: row-major
images, ``autoDownsample`` off, explicit ``levels`` on every update, a uint8
256-entry LUT (stretch applied to the LUT), float32 NaN-free display copies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from diffgui.app.display import DisplayImage, stretch_index

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False, useOpenGL=False)

__all__ = ["ImagePanel", "make_lut", "ROLE_TITLES", "DIVERGING_ROLES", "STAMP_ROLES", "COLORMAPS", "lut_colormap"]

ROLE_TITLES = {
    "science": "Science", "template": "Template", "diff": "Difference", "scorr": "S_corr",
    "noise": "Difference noise", "convolved": "Convolved template", "scaled": "Scaled difference",
    "kernel": "Kernel", "psf": "P_D (PSF of D)", "image_psf": "Science PSF", "template_psf": "Template PSF",
}
#: Roles drawn on their own pixel grid (stamps), not linked to the image panels.
STAMP_ROLES = frozenset({"kernel", "psf", "image_psf", "template_psf"})
#: Roles drawn with a diverging colour map centred on zero.
DIVERGING_ROLES = frozenset({"diff", "scorr", "scaled"})
#: Colour map of each kind of panel (pyqtgraph names).
COLORMAPS = {"image": "gray", "diverging": "CET-D1A", "kernel": "viridis"}


@lru_cache(maxsize=64)
def _base_table(name: str) -> np.ndarray:
    if name == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        return np.column_stack([ramp, ramp, ramp, np.full(256, 255, np.uint8)])
    cmap = pg.colormap.get(name)
    return cmap.getLookupTable(0.0, 1.0, nPts=256, alpha=True).astype(np.uint8)


@lru_cache(maxsize=64)
def make_lut(cmap: str, stretch: str = "linear", diverging: bool = False) -> np.ndarray:
    """A uint8 (256, 4) table: colour map ``cmap`` re-indexed by ``stretch``."""
    return np.ascontiguousarray(_base_table(cmap)[stretch_index(stretch, 256, diverging)])


def colormap_for(role: str) -> str:
    if role in DIVERGING_ROLES:
        return COLORMAPS["diverging"]
    return COLORMAPS["kernel"] if role in STAMP_ROLES else COLORMAPS["image"]


class _Title(pg.GraphicsWidget):
    """A panel title: the name in bold and the value under the crosshair right-aligned in
    yellow. A title with a run summary (``'S_corr · ZOGY nx=2'``) that does not fit in one
    line takes two (name, then summary); what still does not fit ends in "…", with the
    full text in the tooltip. Never forces the grid wider."""

    def __init__(self, text: str = ""):
        super().__init__()
        self.font = QtGui.QFont()
        self.font.setPointSizeF(9.0)
        self.bold = QtGui.QFont(self.font)
        self.bold.setBold(True)
        self._line = QtGui.QFontMetrics(self.bold).height() + 2
        self.text, self.value = text, ""
        self._nlines = 0
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(0)
        self.setPreferredWidth(0)
        self._set_lines(1)

    def _set_lines(self, n: int) -> None:
        if n != self._nlines:
            self._nlines = n
            h = n * self._line + 2
            self.setMinimumHeight(h)
            self.setMaximumHeight(h)

    def set_parts(self, text: str, value: str = "") -> None:
        self.text, self.value = text, value
        self.setToolTip(text)
        self._set_lines(len(self.lines()))
        self.update()

    def resizeEvent(self, ev):  # noqa: N802 (Qt name)
        super().resizeEvent(ev)
        self._set_lines(len(self.lines()))

    def _value_width(self) -> int:
        return QtGui.QFontMetrics(self.font).horizontalAdvance(self.value) + 10 if self.value else 0

    def lines(self) -> list:
        """The title as drawn: one or two lines, each elided to the width it has."""
        w = max(0, int(self.size().width()) - 8)
        bold = QtGui.QFontMetrics(self.bold)
        first_w = max(0, w - self._value_width())
        if bold.horizontalAdvance(self.text) <= first_w or " · " not in self.text:
            return [bold.elidedText(self.text, QtCore.Qt.TextElideMode.ElideRight, first_w)]
        name, _, summary = self.text.partition(" · ")
        plain = QtGui.QFontMetrics(self.font)
        names = [name]
        if bold.horizontalAdvance(name) > first_w and " " in name:  # "Convolved / template"
            head, _, tail = name.rpartition(" ")
            names = [head, tail]
        return [bold.elidedText(names[0], QtCore.Qt.TextElideMode.ElideRight, first_w),
                *(bold.elidedText(n, QtCore.Qt.TextElideMode.ElideRight, w) for n in names[1:]),
                plain.elidedText(summary, QtCore.Qt.TextElideMode.ElideRight, w)]

    def shown_text(self) -> str:
        return " · ".join(self.lines())

    def paint(self, p, *args):
        r = self.boundingRect().adjusted(4, 1, -4, 0)
        flags = QtCore.Qt.AlignmentFlag.AlignVCenter
        for i, line in enumerate(self.lines()):
            row = QtCore.QRectF(r.x(), r.y() + i * self._line, r.width(), self._line)
            last = i == len(self.lines()) - 1 and i > 0
            p.setFont(self.font if last else self.bold)
            p.setPen(QtGui.QColor(160, 200, 255) if last else QtGui.QColor(225, 225, 225))
            p.drawText(row, flags | QtCore.Qt.AlignmentFlag.AlignLeft, line)
            if i == 0 and self.value:
                p.setFont(self.font)
                p.setPen(QtGui.QColor(255, 210, 0))
                p.drawText(row, flags | QtCore.Qt.AlignmentFlag.AlignRight, self.value)


def _colorbar(role: str) -> pg.ColorBarItem:
    bar = pg.ColorBarItem(values=(0.0, 1.0), width=8, colorMap=None, interactive=False,
                          colorMapMenu=False, rounding=1e-12)
    axis = bar.getAxis("right")
    font = QtGui.QFont()
    font.setPointSizeF(7.0)
    axis.setStyle(tickFont=font, tickTextOffset=2, tickLength=3)
    axis.setWidth(32)
    bar.setContentsMargins(0, 2, 0, 2)
    bar.setToolTip(f"Colour bar of the {ROLE_TITLES.get(role, role)} panel: its limits and stretch")
    return bar


def lut_colormap(lut: np.ndarray) -> pg.ColorMap:
    """A pyqtgraph ColorMap that draws the 256-entry ``lut`` (stretch included)."""
    return pg.ColorMap(np.linspace(0.0, 1.0, len(lut)), np.asarray(lut)[:, :3])


class ImagePanel:
    """A titled view of one image in the panel grid.

    Attributes
    ----------
    role : str
        ``'science'``, ``'template'``, ``'diff'``, ``'scorr'``, ``'noise'``, ``'convolved'``,
        ``'scaled'`` or ``'kernel'``.
    container : pyqtgraph.GraphicsLayout
        Title above the view box; what the grid lays out.
    vb : pyqtgraph.ViewBox
    image : pyqtgraph.ImageItem
    display : DisplayImage or None
        What is shown (None: placeholder text).
    """

    def __init__(self, role: str, title: str | None = None):
        self.role = role
        self.default_title = title or ROLE_TITLES.get(role, role)
        self.title = self.default_title
        self.container = pg.GraphicsLayout()
        self.container.setContentsMargins(1, 1, 1, 1)
        self.container.layout.setSpacing(0)
        self.label = _Title(self.title)
        self.container.addItem(self.label, row=0, col=0, colspan=2)
        self.vb = pg.ViewBox(lockAspect=True, invertY=False, enableMenu=False, name=None)
        self.vb.setBackgroundColor((25, 25, 28))
        self.vb.setDefaultPadding(0.0)
        self.container.addItem(self.vb, row=1, col=0)
        self.colorbar = _colorbar(role)
        self.container.addItem(self.colorbar, row=1, col=1)
        self.colorbar.setVisible(False)
        self.levels = None
        self.image = pg.ImageItem(axisOrder="row-major", autoDownsample=False)
        self.image.setPos(-0.5, -0.5)  # pixel centres at integer coordinates, 0-based
        self.vb.addItem(self.image)
        pen = pg.mkPen((255, 210, 0, 170), width=1, cosmetic=True)
        self.vline = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        self.hline = pg.InfiniteLine(angle=0, movable=False, pen=pen)
        for line in (self.vline, self.hline):
            line.setZValue(10)
            line.setVisible(False)
            self.vb.addItem(line, ignoreBounds=True)
        self.message = pg.TextItem("", color=(170, 170, 170), anchor=(0.5, 0.5))
        self.vb.addItem(self.message, ignoreBounds=True)
        self.display: DisplayImage | None = None
        self.value_text = ""
        self.set_placeholder("no data")

    # ---- content ----------------------------------------------------------------------
    def set_display(self, disp: DisplayImage, levels, lut) -> None:
        """Show ``disp`` with explicit levels and LUT (no autoLevels, no autoDownsample)."""
        first = self.display is None or self.display.shape != disp.shape
        self.display = disp
        set_item_image(self.image, disp, levels, lut)
        self._set_colorbar(levels, lut)
        self.image.setVisible(True)
        self.message.setVisible(False)
        if first and self.role in STAMP_ROLES:
            self.vb.autoRange(padding=0.02)
        self._update_title()

    def set_levels_lut(self, levels, lut) -> None:
        if self.display is not None:
            set_item_image(self.image, self.display, levels, lut)
            self._set_colorbar(levels, lut)

    def _set_colorbar(self, levels, lut) -> None:
        """The colour bar shows the panel's current limits and its LUT (stretch included)."""
        self.levels = (float(levels[0]), float(levels[1]))
        key = id(lut)
        if getattr(self, "_bar_lut", None) != key:
            self.colorbar.setColorMap(lut_colormap(lut))
            self._bar_lut = key
        self.colorbar.setLevels(values=self.levels)
        self.colorbar.setVisible(True)

    def set_placeholder(self, text: str) -> None:
        """Clear the image and show ``text`` in the middle of the view."""
        self.display = None
        self.levels = None
        self.image.clear()
        self.image.setVisible(False)
        self.colorbar.setVisible(False)
        self.message.setText(text)
        self.message.setVisible(True)
        r = self.vb.viewRect()
        self.message.setPos(r.center())
        self._update_title()

    def center_message(self) -> None:
        if self.message.isVisible():
            self.message.setPos(self.vb.viewRect().center())

    def set_title(self, title: str | None = None) -> None:
        """Set the title (None: back to the role's own title)."""
        self.title = self.default_title if title is None else title
        self._update_title()

    # ---- cursor -----------------------------------------------------------------------
    def set_cursor(self, x: float | None, y: float | None) -> None:
        """Move the crosshair and show the value under it in the title (None hides it)."""
        show = x is not None and self.role not in STAMP_ROLES and self.display is not None
        self.vline.setVisible(show)
        self.hline.setVisible(show)
        if show:
            self.vline.setPos(x)
            self.hline.setPos(y)
        self.value_text = ""
        if show and self.display is not None:
            v = self.display.value_at(x, y)
            if v is not None:
                self.value_text = _fmt(v)
        self._update_title()

    def _update_title(self) -> None:
        self.label.set_parts(self.title, self.value_text)

    def contains_scene_pos(self, pos: QtCore.QPointF) -> bool:
        return self.vb.sceneBoundingRect().contains(pos)

    def map_scene_to_pixel(self, pos: QtCore.QPointF) -> tuple[float, float]:
        p = self.vb.mapSceneToView(pos)
        return p.x(), p.y()


def set_item_image(item: pg.ImageItem, disp: DisplayImage, levels, lut) -> None:
    """Show ``disp`` in ``item``: the worker's uint8 rendering when it matches ``levels``
    (no per-pixel work here), else the float32 data with explicit levels."""
    q = disp.quantized_for(levels)
    data, lev = (q, (0, 256)) if q is not None else (disp.data, levels)
    if item.image is data:
        item.setLookupTable(lut, update=False)
        item.setLevels(lev)
    else:
        item.setImage(data, levels=lev, lut=lut, autoLevels=False)


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "nan"
    a = abs(v)
    return f"{v:.4g}" if (a >= 1e-3 and a < 1e5) or v == 0 else f"{v:.3e}"


def grab_png(widget, path: str) -> str:
    """Save a PNG of a widget (works offscreen); returns the path."""
    pix = widget.grab()
    if not pix.save(str(path), "PNG"):
        raise OSError(f"could not write {path}")
    return str(path)


def qcolor(rgb) -> QtGui.QColor:
    return QtGui.QColor(*rgb)
