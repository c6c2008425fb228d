"""One image panel (view box, image, crosshair, title) and the colour tables the panels use.

Follows the pyqtgraph performance rules of ux-reference.md section 3: row-major
images, ``autoDownsample`` off, explicit ``levels`` on every update, a uint8
256-entry LUT (stretch applied to the LUT), float32 NaN-free display copies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui

from diffgui.app.display import DisplayImage, stretch_index

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False, useOpenGL=False)

__all__ = ["ImagePanel", "make_lut", "ROLE_TITLES", "DIVERGING_ROLES", "COLORMAPS"]

ROLE_TITLES = {
    "science": "Science", "template": "Template", "diff": "Difference", "scorr": "S_corr",
    "noise": "Noise", "convolved": "Convolved template", "scaled": "Scaled difference", "kernel": "Kernel",
}
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
    return COLORMAPS["kernel"] if role == "kernel" else COLORMAPS["image"]


class _Title(pg.LabelItem):
    """A panel title that never forces the grid wider (long titles are clipped instead)."""

    def updateMin(self):  # noqa: N802 (pyqtgraph name)
        super().updateMin()
        self.setMinimumWidth(0)
        self._sizeHint[QtCore.Qt.SizeHint.MinimumSize] = (0, self._sizeHint[QtCore.Qt.SizeHint.MinimumSize][1])
        self._sizeHint[QtCore.Qt.SizeHint.PreferredSize] = (0, self._sizeHint[QtCore.Qt.SizeHint.PreferredSize][1])
        self.updateGeometry()


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
        self.title = title or ROLE_TITLES.get(role, role)
        self.container = pg.GraphicsLayout()
        self.container.setContentsMargins(1, 1, 1, 1)
        self.container.layout.setSpacing(0)
        self.label = _Title(self.title, justify="left", size="9pt")
        self.label.setFlag(self.label.GraphicsItemFlag.ItemClipsChildrenToShape, True)
        self.container.addItem(self.label, row=0, col=0)
        self.vb = pg.ViewBox(lockAspect=True, invertY=False, enableMenu=False, name=None)
        self.vb.setBackgroundColor((25, 25, 28))
        self.vb.setDefaultPadding(0.0)
        self.container.addItem(self.vb, row=1, col=0)
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
        self.image.setVisible(True)
        self.message.setVisible(False)
        if first and self.role == "kernel":
            self.vb.autoRange(padding=0.02)
        self._update_title()

    def set_levels_lut(self, levels, lut) -> None:
        if self.display is not None:
            set_item_image(self.image, self.display, levels, lut)

    def set_placeholder(self, text: str) -> None:
        """Clear the image and show ``text`` in the middle of the view."""
        self.display = None
        self.image.clear()
        self.image.setVisible(False)
        self.message.setText(text)
        self.message.setVisible(True)
        r = self.vb.viewRect()
        self.message.setPos(r.center())
        self._update_title()

    def center_message(self) -> None:
        if self.message.isVisible():
            self.message.setPos(self.vb.viewRect().center())

    def set_title(self, title: str) -> None:
        self.title = title
        self._update_title()

    # ---- cursor -----------------------------------------------------------------------
    def set_cursor(self, x: float | None, y: float | None) -> None:
        """Move the crosshair and show the value under it in the title (None hides it)."""
        show = x is not None and self.role != "kernel" and self.display is not None
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
        val = f"  <span style='color:#ffd200'>{self.value_text}</span>" if self.value_text else ""
        self.label.setText(f"<b>{self.title}</b>{val}")

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
