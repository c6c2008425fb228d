"""Menus, actions and keyboard shortcuts of the main window."""

from __future__ import annotations

import os
from types import SimpleNamespace

from PyQt6 import QtGui, QtWidgets

from .imaging import ROLE_TITLES
from .panels import ALL_ROLES

__all__ = ["build_menus"]

_FITS_FILTER = "FITS images (*.fits *.fit *.fts *.fits.fz *.fz *.fits.gz);;All files (*)"


def add_action(win, menu, text, slot, shortcut=None, tip=None, checkable=False):
    """Add an action with its shortcut and tooltip to ``menu``; returns the QAction."""
    act = QtGui.QAction(text, win)
    if shortcut:
        act.setShortcut(QtGui.QKeySequence(shortcut))
    if tip:
        act.setStatusTip(tip)
        act.setToolTip(tip)
    act.setCheckable(checkable)
    (act.toggled if checkable else act.triggered).connect(slot)
    menu.addAction(act)
    return act


def ask_pair(win) -> None:
    """File > Open pair: choose the science image, then the template."""
    start = win.settings.value("last_dir", "") or ""
    sci, _ = QtWidgets.QFileDialog.getOpenFileName(win, "Science image", start, _FITS_FILTER)
    if not sci:
        return
    tmpl, _ = QtWidgets.QFileDialog.getOpenFileName(win, "Template image", os.path.dirname(sci), _FITS_FILTER)
    if tmpl:
        win.settings.setValue("last_dir", os.path.dirname(sci))
        win.open_pair(sci, tmpl)


def ask_save_results(win) -> None:
    path, _ = QtWidgets.QFileDialog.getSaveFileName(win, "Save results (multi-extension FITS)",
                                                    "diffgui-results.fits", "FITS (*.fits)")
    if path:
        # the dialog already asked about replacing an existing file
        win.save_results(path, overwrite=os.path.exists(path))


def ask_save_png(win) -> None:
    path, _ = QtWidgets.QFileDialog.getSaveFileName(win, "Save the panels as PNG", "diffgui-panels.png",
                                                    "PNG (*.png)")
    if path:
        win.save_panels_png(path)


def build_menus(win) -> SimpleNamespace:
    """Create the File, Run, View and Help menus of ``win``; returns the actions."""
    mb = win.menuBar()
    a = SimpleNamespace()
    file_menu = mb.addMenu("&File")
    a.open = add_action(win, file_menu, "&Open pair...", lambda: ask_pair(win), "Ctrl+O",
                     "Open a science image and its template (FITS or .fits.fz)")
    a.demo = add_action(win, file_menu, "&Demo pair", lambda: win.open_demo(), "Ctrl+D",
                     "Open the built-in simulated pair with transients")
    win.recent_menu = file_menu.addMenu("&Recent pairs")
    file_menu.addSeparator()
    a.save = add_action(win, file_menu, "&Save results...", lambda: ask_save_results(win), "Ctrl+S",
                     "Save the run's results as one multi-extension FITS file")
    a.png = add_action(win, file_menu, "Save panels as &PNG...", lambda: ask_save_png(win), "Ctrl+P",
                    "Save a PNG of the panel grid (or of the blink view)")
    file_menu.addSeparator()
    a.quit = add_action(win, file_menu, "&Quit", win.close, "Ctrl+Q")

    run_menu = mb.addMenu("&Run")
    a.run = add_action(win, run_menu, "&Run", win.start_run, "F5", "Run the subtraction with these parameters")
    a.cancel = add_action(win, run_menu, "&Cancel", win.cancel_run, "Esc", "Stop the running subtraction")
    a.cancel.setEnabled(False)
    a.defaults = add_action(win, run_menu, "Reset parameters to &defaults", win.form.reset_defaults)

    view = win.view_menu = mb.addMenu("&View")
    a.blink = add_action(win, view, "&Blink view", win.show_blink, "B", "Blink panels in one view", checkable=True)
    win.tabs.currentChanged.connect(lambda i: _sync_check(a.blink, win.tabs.currentWidget() is win.blink))
    a.reset_zoom = add_action(win, view, "&Zoom to fit", win.grid.reset_view, "Home")
    panels_menu = view.addMenu("&Panels")
    a.panels = {}
    for role in ALL_ROLES:
        act = add_action(win, panels_menu, ROLE_TITLES[role], lambda on, r=role: win.set_panel_visible(r, on),
                      checkable=True)
        _sync_check(act, role in win.grid.roles)
        a.panels[role] = act
    cols = view.addMenu("&Columns")
    for n in range(0, 6):
        add_action(win, cols, str(n) if n else "auto", lambda checked=False, k=n: win.toolbar.columns.setValue(k))
    view.addSeparator()
    for dock in win.findChildren(QtWidgets.QDockWidget):
        view.addAction(dock.toggleViewAction())

    help_menu = mb.addMenu("&Help")
    add_action(win, help_menu, "&Keys and mouse", lambda: _show_keys(win))
    add_action(win, help_menu, "&About diffgui", lambda: _about(win))

    def refresh_recent():
        win.recent_menu.clear()
        for entry in win.recent_pairs():
            sci, _, tmpl = entry.partition("|")
            act = win.recent_menu.addAction(f"{os.path.basename(sci)}  -  {os.path.basename(tmpl)}")
            act.setToolTip(entry.replace("|", "\n"))
            act.triggered.connect(lambda checked=False, s=sci, t=tmpl: win.open_pair(s, t))
        win.recent_menu.setEnabled(bool(win.recent_pairs()))

    a.refresh_recent = refresh_recent
    refresh_recent()
    return a


def _sync_check(act, on: bool) -> None:
    act.blockSignals(True)
    act.setChecked(on)
    act.blockSignals(False)


KEYS = """<table>
<tr><td><b>F5</b></td><td>run the subtraction</td></tr>
<tr><td><b>Esc</b></td><td>cancel the run</td></tr>
<tr><td><b>B</b></td><td>blink view on/off</td></tr>
<tr><td><b>Space</b></td><td>start/stop blinking (blink view)</td></tr>
<tr><td><b>Left / Right</b></td><td>previous/next blink frame</td></tr>
<tr><td><b>Home</b></td><td>zoom to fit</td></tr>
<tr><td><b>wheel / drag</b></td><td>zoom / pan every panel together</td></tr>
<tr><td><b>Ctrl+O / Ctrl+S / Ctrl+P</b></td><td>open pair / save results / save PNG</td></tr>
</table>"""


def _show_keys(win) -> None:
    QtWidgets.QMessageBox.information(win, "Keys and mouse", KEYS)


def _about(win) -> None:
    import diffgui

    QtWidgets.QMessageBox.about(win, "About diffgui",
                                f"diffgui {diffgui.__version__}<br>Image subtraction with HOTPANTS, ZOGY and SFFT.")
