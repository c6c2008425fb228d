"""Blinking a chosen subset of panels in one view, in place, with pan and zoom kept.

Every blinkable image is a separate ImageItem stacked in one view box; a frame
switch only changes which item is visible, so it does not re-render the image
(each item keeps its rendered QImage). Space starts/stops, Left/Right step,
the rate is adjustable; the frame list is any subset of the panels that hold
an image (science, template and difference by default).
"""

from __future__ import annotations

import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from .imaging import ROLE_TITLES, set_item_image

__all__ = ["BlinkView", "DEFAULT_BLINK"]

DEFAULT_BLINK = ("science", "template", "diff")
BLINKABLE = ("science", "template", "convolved", "diff", "scaled", "scorr", "noise")


class BlinkView(QtWidgets.QWidget):
    """One view cycling through the images of a :class:`~diffgui.gui.panels.PanelGrid`.

    Signals
    -------
    frameChanged(str)
        Role now shown.
    """

    frameChanged = QtCore.pyqtSignal(str)

    def __init__(self, grid, parent=None):
        super().__init__(parent)
        self.grid = grid
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        bar = QtWidgets.QHBoxLayout()
        self.play_btn = QtWidgets.QPushButton("Blink")
        self.play_btn.setCheckable(True)
        self.play_btn.setToolTip("Start/stop blinking (Space)")
        self.play_btn.toggled.connect(self.set_playing)
        prev_btn = QtWidgets.QPushButton("<")
        prev_btn.setToolTip("Previous frame (Left)")
        prev_btn.clicked.connect(lambda: self.step(-1))
        next_btn = QtWidgets.QPushButton(">")
        next_btn.setToolTip("Next frame (Right)")
        next_btn.clicked.connect(lambda: self.step(1))
        for w in (self.play_btn, prev_btn, next_btn):
            w.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
            w.setMaximumWidth(70 if w is self.play_btn else 32)
            bar.addWidget(w)
        bar.addWidget(QtWidgets.QLabel("interval"))
        self.rate = QtWidgets.QDoubleSpinBox()
        self.rate.setRange(0.05, 30.0)
        self.rate.setSingleStep(0.1)
        self.rate.setValue(0.5)
        self.rate.setSuffix(" s")
        self.rate.setToolTip("Time each frame is shown")
        self.rate.valueChanged.connect(lambda v: self.timer.setInterval(int(v * 1000)))
        bar.addWidget(self.rate)
        self.frames_btn = QtWidgets.QToolButton()
        self.frames_btn.setText("Frames")
        self.frames_btn.setToolTip("Choose the panels to blink")
        self.frames_btn.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        self.frames_btn.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        menu = QtWidgets.QMenu(self.frames_btn)
        self.checks = {}
        for role in BLINKABLE:
            act = menu.addAction(ROLE_TITLES[role])
            act.setCheckable(True)
            act.setChecked(role in DEFAULT_BLINK)
            act.toggled.connect(self._on_subset_changed)
            self.checks[role] = act
        self.frames_btn.setMenu(menu)
        bar.addWidget(self.frames_btn)
        self.subset_label = QtWidgets.QLabel("")
        self.subset_label.setStyleSheet("color: gray;")
        self.subset_label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        bar.addWidget(self.subset_label, 1)
        self.frame_label = QtWidgets.QLabel("")
        self.frame_label.setStyleSheet("font-weight: bold;")
        self.frame_label.setMinimumWidth(90)
        bar.addWidget(self.frame_label)
        lay.addLayout(bar)
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground((18, 18, 20))
        self.view.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.vb = self.view.addViewBox(lockAspect=True, invertY=False, enableMenu=False)
        self.vb.setDefaultPadding(0.0)
        self.title = pg.TextItem("", color=(255, 210, 0), anchor=(0, 0), fill=pg.mkBrush(0, 0, 0, 170))
        self.title.setZValue(20)
        self.vb.addItem(self.title, ignoreBounds=True)
        self.vb.sigRangeChanged.connect(self._place_title)
        lay.addWidget(self.view, 1)
        self.items: dict[str, pg.ImageItem] = {}
        self._sources = {}
        self.index = 0
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(int(self.rate.value() * 1000))
        self.timer.timeout.connect(lambda: self.step(1))
        self._on_subset_changed()

    # ---- content ----------------------------------------------------------------------
    def sync_images(self) -> None:
        """Take the images, levels and colour tables of the grid's panels (after loads and runs)."""
        for role in BLINKABLE:
            disp = self.grid.display(role)
            item = self.items.get(role)
            if disp is None:
                if item is not None:
                    item.clear()
                    item.setVisible(False)
                self._sources.pop(role, None)
                continue
            if item is None:
                item = pg.ImageItem(axisOrder="row-major", autoDownsample=False)
                item.setPos(-0.5, -0.5)
                self.vb.addItem(item)
                self.items[role] = item
            set_item_image(item, disp, self.grid.levels_for(role), self.grid.lut_for(role))
            self._sources[role] = disp
        self._show()

    def frames(self) -> list:
        """Roles in the blink cycle: checked and holding an image."""
        return [r for r in BLINKABLE if self.checks[r].isChecked() and r in self._sources]

    def set_subset(self, roles) -> None:
        """Choose the blinked roles."""
        for r, cb in self.checks.items():
            cb.blockSignals(True)
            cb.setChecked(r in roles)
            cb.blockSignals(False)
        self._on_subset_changed()

    def current(self) -> str | None:
        f = self.frames()
        return f[self.index % len(f)] if f else None

    def _on_subset_changed(self, *args) -> None:
        chosen = [ROLE_TITLES[r] for r in BLINKABLE if self.checks[r].isChecked()]
        self.subset_label.setText(" / ".join(chosen))
        self._show()

    def _show(self) -> None:
        role = self.current()
        for r, item in self.items.items():
            item.setVisible(r == role)
        self.frame_label.setText(ROLE_TITLES.get(role, "") if role else "nothing to blink")
        self.title.setText(ROLE_TITLES.get(role, "") if role else "")
        self._place_title()
        if role:
            self.frameChanged.emit(role)

    def _place_title(self, *args) -> None:
        (x0, _), (_, y1) = self.vb.viewRange()
        self.title.setPos(x0, y1)

    # ---- control ----------------------------------------------------------------------
    def step(self, n: int = 1) -> None:
        """Show the frame ``n`` steps ahead (negative: back)."""
        f = self.frames()
        if f:
            self.index = (self.index + n) % len(f)
        self._show()

    def set_playing(self, on: bool) -> None:
        if on and len(self.frames()) > 1:
            self.timer.start()
        else:
            self.timer.stop()
            on = False
        if self.play_btn.isChecked() != on:
            self.play_btn.blockSignals(True)
            self.play_btn.setChecked(on)
            self.play_btn.blockSignals(False)

    def toggle(self) -> None:
        self.set_playing(not self.timer.isActive())

    @property
    def playing(self) -> bool:
        return self.timer.isActive()

    def keyPressEvent(self, ev):  # noqa: N802 (Qt name)
        key = ev.key()
        if key == QtCore.Qt.Key.Key_Space:
            self.toggle()
        elif key == QtCore.Qt.Key.Key_Left:
            self.step(-1)
        elif key == QtCore.Qt.Key.Key_Right:
            self.step(1)
        else:
            super().keyPressEvent(ev)
            return
        ev.accept()

    # ---- view -------------------------------------------------------------------------
    def copy_view_from(self, vb) -> None:
        """Take the pan/zoom of another view box (the grid's) ..."""
        (x0, x1), (y0, y1) = vb.viewRange()
        self.vb.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0.0)

    def copy_view_to(self, vb) -> None:
        """... and give it back when leaving the blink view."""
        (x0, x1), (y0, y1) = self.vb.viewRange()
        vb.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0.0)
