"""The grid of linked image panels: layout, linked pan/zoom, one crosshair, shared levels.

Science, template and the convolved template share their intensity scale, each
offset by its own sky level (limits from the union of the sky-subtracted samples); the difference, scaled difference and S_corr use a
diverging map with limits symmetric about zero at ``nsigma`` robust sigmas; the
noise map has its own limits; the kernel panel is not linked (other pixel scale).
"""

from __future__ import annotations

import pyqtgraph as pg
from PyQt6 import QtCore

from diffgui.app import display as dmath
from diffgui.app import kernels
from diffgui.app.display import DisplayImage

from .imaging import DIVERGING_ROLES, ROLE_TITLES, STAMP_ROLES, ImagePanel, colormap_for, make_lut

__all__ = ["PanelGrid", "ALL_ROLES", "DEFAULT_ROLES", "SHARED_ROLES", "roles_for_outputs", "method_roles",
           "result_for", "LAYOUTS"]

ALL_ROLES = ("science", "template", "diff", "scaled", "scorr", "noise", "convolved", "psf", "image_psf",
             "template_psf", "kernel")
DEFAULT_ROLES = ("science", "template", "diff", "scorr", "noise", "convolved", "kernel")
#: Panel layouts: one large main panel with the others beside it, or an even grid.
LAYOUTS = ("main", "grid")
_MAIN_SHARE = 0.75  # width of the main panel in the "main" layout


#: Panels a method fills beyond its listed outputs (from the engine's intermediate products).
EXTRA_PANELS = {"zogy": ("image_psf", "template_psf")}
#: Where a role's image comes from when a method names it otherwise (ZOGY's noise map).
ROLE_SOURCES = {"noise": ("noise", "fpsf_err")}


def method_roles(info) -> list:
    """The panels of a method (a :class:`~diffgui.app.methods.MethodInfo`): only what it produces."""
    outs = tuple("noise" if o == "fpsf_err" else o for o in info.outputs)
    return roles_for_outputs(outs + EXTRA_PANELS.get(info.name, ()))


def result_for(disp: dict, role: str):
    """The display image of ``role`` among a run's ``{output: DisplayImage}`` (None if absent)."""
    for name in ROLE_SOURCES.get(role, (role,)):
        if disp.get(name) is not None:
            return disp[name]
    return None


def roles_for_outputs(outputs) -> list:
    """The panels a method shows: science and template, then only what it produces
    (``outputs`` are the keys of its results, e.g. ``MethodInfo.outputs``)."""
    outs = set(outputs)
    return ["science", "template"] + [r for r in ALL_ROLES[2:] if r in outs]
#: Roles drawn with one set of levels (the flux-calibrated images).
SHARED_ROLES = ("science", "template", "convolved")


class PanelGrid(pg.GraphicsLayoutWidget):
    """Linked image panels in a grid of ``columns`` columns (0 = chosen from the widget's shape
    so that the panels come out as large as possible).

    Signals
    -------
    cursorMoved(float, float)
        0-based pixel coordinates under the mouse in any linked panel.
    cursorLeft()
    clicked(float, float)
    """

    cursorMoved = QtCore.pyqtSignal(float, float)
    cursorLeft = QtCore.pyqtSignal()
    clicked = QtCore.pyqtSignal(float, float)

    def __init__(self, parent=None, roles=DEFAULT_ROLES, columns: int = 0):
        super().__init__(parent)
        self.setBackground((18, 18, 20))
        self.ci.setContentsMargins(2, 2, 2, 2)
        self.ci.layout.setSpacing(3)
        self.panels = {role: ImagePanel(role) for role in ALL_ROLES}
        self.master = self.panels["science"].vb
        # Panels have different sizes (one main panel, smaller ones beside it), so they are not
        # linked with pyqtgraph's setXLink/setYLink (equal ranges would stretch the pixels of
        # the panels of another shape, and linked aspect-locked views run away, pyqtgraph#1348):
        # every image panel keeps square pixels and shows at least the region the last moved
        # panel was asked to show, around the same centre.
        self._syncing = False
        for role, panel in self.panels.items():
            if role not in STAMP_ROLES:
                panel.vb.setAspectLocked(True)
                panel.vb.sigRangeChanged.connect(lambda vb, rng, *a, r=role: self._sync_from(r))
        self.roles = [r for r in roles if r in self.panels]
        self.columns = max(0, int(columns))
        self.mode = "main"
        self.main_role = "diff"
        self.maximised = None
        self._laid_out = None
        self.limits_mode = "zscale"
        self.stretch = "linear"
        self.nsigma = 5.0
        self.cursor = None
        self._shared_cache = (None, None)
        self._relayout()
        self._proxy = pg.SignalProxy(self.scene().sigMouseMoved, rateLimit=60, slot=self._on_mouse_moved)
        self.scene().sigMouseClicked.connect(self._on_click)
        self.master.sigRangeChanged.connect(self._recenter_messages)

    # ---- layout ------------------------------------------------------------------------
    def set_layout(self, roles=None, columns: int | None = None, mode: str | None = None) -> None:
        """Show ``roles`` (in order) in ``columns`` columns; ``mode`` is ``'main'`` (one large
        panel, the others beside it) or ``'grid'``."""
        if roles is not None:
            self.roles = [r for r in roles if r in self.panels]
            if self.maximised not in self.roles:
                self.maximised = None
        if columns is not None:
            self.columns = max(0, int(columns))
        if mode is not None:
            if mode not in LAYOUTS:
                raise ValueError(f"unknown layout {mode!r}; use one of {', '.join(LAYOUTS)}")
            self.mode = mode
        self._relayout()

    def toggle_maximised(self, role: str | None) -> None:
        """Show only panel ``role`` (the whole area), or the layout again when it is already
        maximised (or ``role`` is None)."""
        self.maximised = None if (role is None or self.maximised == role or role not in self.roles) else role
        self._relayout()

    def current_main(self) -> str | None:
        """The panel drawn large in the ``'main'`` layout: the difference once there is one,
        the science image before."""
        for r in (self.main_role, "diff", "science"):
            if r in self.roles and (self.panels[r].display is not None or r == "science"):
                return r
        return self.roles[0] if self.roles else None

    def effective_columns(self) -> int:
        """Columns in use: the set number, or for 0 the one giving the largest square panels."""
        n = max(1, len(self.roles))
        if self.columns:
            return self.columns
        w, h = max(1, self.width()), max(1, self.height())
        disp = self.panels["science"].display
        aspect = disp.shape[1] / disp.shape[0] if disp is not None else 1.0  # width / height
        best, best_size = 1, -1.0
        for c in range(1, n + 1):
            rows = -(-n // c)
            cw, ch = w / c, h / rows - 16  # title row
            size = min(cw / aspect, ch)
            if size > best_size + 1e-6:
                best, best_size = c, size
        return best

    def resizeEvent(self, ev):  # noqa: N802 (Qt name)
        super().resizeEvent(ev)
        if getattr(self, "_laid_out", False) is False:
            return  # called by the base class constructor, before the panels exist
        if self._laid_out != self._layout_key():
            self._relayout()
        elif self._laid_out and self._laid_out[0] == "main":
            self._apply_main_stretch()

    def main_share(self) -> float:
        """Width fraction of the main panel: as wide as its image drawn at the full height
        (plus its colour bar), between 45 % and :data:`_MAIN_SHARE` of the grid."""
        w, h = max(1, self.width()), max(1, self.height())
        disp = self.panels["science"].display
        aspect = disp.shape[1] / disp.shape[0] if disp is not None else 1.0
        want = (h - 24) * aspect + 52  # title row; colour bar and its axis
        return float(min(_MAIN_SHARE, max(0.45, want / w)))

    def _apply_main_stretch(self, force: bool = False) -> None:
        k = getattr(self, "_side_columns", 1)
        share = self.main_share()
        s0, s1 = int(round(1000 * share)), int(round(1000 * (1 - share) / k))
        lay = self.ci.layout
        if not force and lay.columnStretchFactor(0) == s0:
            return
        lay.setColumnStretchFactor(0, s0)
        for c in range(1, k + 1):
            lay.setColumnStretchFactor(c, s1)

    def _layout_key(self):
        if self.maximised:
            return ("max", self.maximised)
        if self.mode == "main" and not self.columns and len(self.roles) > 1:
            return ("main", tuple(self.roles), self.current_main())
        return ("grid", tuple(self.roles), self.effective_columns())

    def _relayout(self) -> None:
        for panel in self.panels.values():
            if panel.container.scene() is not None:
                self.ci.removeItem(panel.container)
        lay = self.ci.layout
        for i in range(lay.columnCount()):  # empty rows and columns with a stretch take space too
            lay.setColumnStretchFactor(i, 0)
        for i in range(lay.rowCount()):
            lay.setRowStretchFactor(i, 0)
        key = self._layout_key()
        self._laid_out = key
        shown = [self.maximised] if key[0] == "max" else list(self.roles)
        if key[0] == "max":
            self.ci.addItem(self.panels[self.maximised].container, row=0, col=0)
        elif key[0] == "main":
            main = key[2]
            side = [r for r in self.roles if r != main]
            k = 1 if len(side) <= 3 else 2
            rows = max(1, -(-len(side) // k))
            self.ci.addItem(self.panels[main].container, row=0, col=0, rowspan=rows, colspan=1)
            for i, role in enumerate(side):
                self.ci.addItem(self.panels[role].container, row=i // k, col=1 + i % k)
            self._side_columns = k
            self._apply_main_stretch(force=True)
            for r in range(rows):
                lay.setRowStretchFactor(r, 1)
        else:
            cols = key[2]
            for i, role in enumerate(self.roles):
                self.ci.addItem(self.panels[role].container, row=i // cols, col=i % cols)
            for c in range(cols):
                lay.setColumnStretchFactor(c, 1)
            for r in range(-(-len(self.roles) // cols)):
                lay.setRowStretchFactor(r, 1)
        for panel in self.panels.values():
            panel.container.setVisible(panel.role in shown)

    def _sync_from(self, role: str) -> None:
        """Give every other image panel the region panel ``role`` was asked to show."""
        if self._syncing:
            return
        self._syncing = True
        try:
            (x0, x1), (y0, y1) = self.panels[role].vb.targetRange()
            for r, p in self.panels.items():
                if r != role and r not in STAMP_ROLES:
                    p.vb.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0.0)
        finally:
            self._syncing = False

    # ---- data --------------------------------------------------------------------------
    def set_image(self, role: str, disp: DisplayImage | None, placeholder: str = "no data") -> None:
        """Show a display image in a panel (None: placeholder text)."""
        panel = self.panels[role]
        if disp is None:
            panel.set_placeholder(placeholder)
            return
        panel.set_display(disp, self.levels_for(role, disp), self.lut_for(role))
        if role in ("science", "template"):
            self._apply_levels(SHARED_ROLES)
        if self._laid_out is not None and self._laid_out != self._layout_key():
            self._relayout()  # the difference became the main panel

    def set_images(self, images: dict, placeholders: dict | None = None) -> None:
        """Set several panels at once; roles missing from ``images`` get their placeholder."""
        placeholders = placeholders or {}
        for role, disp in images.items():
            p = self.panels[role]
            if disp is None:
                p.set_placeholder(placeholders.get(role, "no data"))
            else:
                p.display = disp
        for role, disp in images.items():
            if disp is not None:
                self.panels[role].set_display(disp, self.levels_for(role, disp), self.lut_for(role))
        if self._laid_out is not None and self._laid_out != self._layout_key():
            self._relayout()

    def clear_results(self, placeholder: str = "F5 to run") -> None:
        """Forget everything but science and template: placeholders, titles back to the roles'
        own, crosshair hidden (a new pair)."""
        for role, p in self.panels.items():
            if role not in ("science", "template"):
                p.set_placeholder(placeholder)
            p.set_title(None)
        self.set_cursor(None, None)

    def set_titles(self, suffix: str) -> None:
        """Append ``suffix`` (method and parameter summary) to the titles of the result panels."""
        for role, p in self.panels.items():
            if role not in ("science", "template", "kernel"):
                p.set_title(f"{p.default_title} · {suffix}" if suffix else None)

    def show_kernel(self, results: dict, shape, grid: int = 0, placeholder: str = "no kernel") -> None:
        """Draw the run's kernel at the cursor (``grid=0``) or on a ``grid x grid`` mosaic."""
        if shape is None or not kernels.has_kernel(results):
            self.set_image("kernel", None, placeholder)
            return
        title = kernels.kernel_title(results)
        try:
            if grid:
                k = kernels.kernel_grid(results, shape, grid)
                title += f" · {grid}x{grid} grid"
            else:
                x, y = self.cursor or ((shape[1] - 1) / 2, (shape[0] - 1) / 2)
                k = kernels.kernel_at(results, x, y, shape)
                title += f" · at ({x:.0f}, {y:.0f})"
        except Exception as exc:  # a kernel that cannot be drawn must not break the cursor
            self.set_image("kernel", None, f"kernel unavailable: {exc}")
            return
        self.panels["kernel"].set_title(title)
        self.set_image("kernel", None if k is None else DisplayImage.from_array(k), placeholder)

    def display(self, role: str) -> DisplayImage | None:
        return self.panels[role].display

    def reset_view(self) -> None:
        """Fit the science image (and so every linked panel) to its view."""
        disp = self.panels["science"].display
        if disp is not None:
            ny, nx = disp.shape
            self.master.setRange(xRange=(-0.5, nx - 0.5), yRange=(-0.5, ny - 0.5), padding=0.0)
        for role in STAMP_ROLES:
            if self.panels[role].display is not None:
                self.panels[role].vb.autoRange(padding=0.02)

    # ---- levels and colours ------------------------------------------------------------
    def lut_for(self, role: str):
        return make_lut(colormap_for(role), self.stretch, role in DIVERGING_ROLES)

    def levels_for(self, role: str, disp: DisplayImage | None = None):
        disp = disp or self.panels[role].display
        if disp is None:
            return (0.0, 1.0)
        return self.levels_function()(role, disp)

    def shared_levels(self):
        """Sky-relative levels of science, template and convolved (see ``shared_limits``)."""
        shared = [self.panels[r].display for r in ("science", "template") if self.panels[r].display is not None]
        if not shared:
            return None
        key = (tuple(id(d) for d in shared), self.limits_mode)
        if self._shared_cache[0] != key:
            self._shared_cache = (key, dmath.shared_limits(shared, self.limits_mode))
        return self._shared_cache[1]

    def levels_function(self):
        """``levels(role, disp)`` with the current settings, safe to call from a worker thread."""
        mode, nsigma, shared = self.limits_mode, self.nsigma, self.shared_levels()

        def levels(role, disp):
            if role in DIVERGING_ROLES:
                return disp.limits(symmetric=True, nsigma=nsigma)
            if role in SHARED_ROLES and shared is not None:
                sky = disp.sky
                return (shared[0] + sky, shared[1] + sky)
            return disp.limits("minmax" if role in STAMP_ROLES else mode)

        return levels

    def set_display_options(self, limits_mode: str | None = None, stretch: str | None = None,
                            nsigma: float | None = None) -> None:
        """Change limits mode, stretch or the diverging range and redraw every panel."""
        if limits_mode is not None:
            if limits_mode not in dmath.LIMIT_MODES and not str(limits_mode).endswith("%"):
                raise ValueError(f"unknown limits mode {limits_mode!r}")
            self.limits_mode = limits_mode
        if stretch is not None:
            make_lut("gray", stretch)  # validates the name
            self.stretch = stretch
        if nsigma is not None:
            self.nsigma = float(nsigma)
        self._apply_levels(tuple(self.panels))

    def _apply_levels(self, roles) -> None:
        for role in roles:
            p = self.panels[role]
            if p.display is not None:
                p.set_levels_lut(self.levels_for(role), self.lut_for(role))

    # ---- cursor ------------------------------------------------------------------------
    def panel_at(self, scene_pos) -> ImagePanel | None:
        for role in self.roles:
            p = self.panels[role]
            if p.container.isVisible() and p.contains_scene_pos(scene_pos):
                return p
        return None

    def _on_mouse_moved(self, evt) -> None:
        pos = evt[0]
        p = self.panel_at(pos)
        if p is None or p.role in STAMP_ROLES:
            return
        x, y = p.map_scene_to_pixel(pos)
        self.set_cursor(x, y)

    def set_cursor(self, x: float | None, y: float | None) -> None:
        """Put the shared crosshair at pixel ``(x, y)`` in every panel (None hides it)."""
        self.cursor = None if x is None else (x, y)
        for p in self.panels.values():
            if p.role in self.roles:
                p.set_cursor(x, y)
        if x is None:
            self.cursorLeft.emit()
        else:
            self.cursorMoved.emit(x, y)

    def values_at(self, x: float, y: float) -> dict:
        """``{role: value}`` of every panel holding an image at pixel ``(x, y)``."""
        out = {}
        for role, p in self.panels.items():
            if p.display is not None and role not in STAMP_ROLES:
                v = p.display.value_at(x, y)
                if v is not None:
                    out[role] = v
        return out

    def _on_click(self, ev) -> None:
        p = self.panel_at(ev.scenePos())
        if p is not None and ev.double():
            self.toggle_maximised(p.role)
            ev.accept()
            return
        if p is not None and p.role not in STAMP_ROLES:
            x, y = p.map_scene_to_pixel(ev.scenePos())
            self.clicked.emit(x, y)

    def _recenter_messages(self, *args) -> None:
        for p in self.panels.values():
            p.center_message()

    def titles(self) -> dict:
        return {r: ROLE_TITLES[r] for r in self.roles}
