"""Menus, actions and keyboard shortcuts of the main window."""

from __future__ import annotations

import os
from types import SimpleNamespace

from PyQt6 import QtGui, QtWidgets

from .imaging import ROLE_TITLES
from .keys import help_html, shortcut
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
    """File > Open pair: the science image, the template and optional noise maps and masks."""
    from .open_pair_dialog import OpenPairDialog

    dialog = OpenPairDialog(win, win.settings.value("last_dir", "") or "")
    if dialog.exec() != QtWidgets.QDialog.DialogCode.Accepted:
        return
    files = dialog.values()
    sci, tmpl = files.pop("science"), files.pop("template")
    win.settings.setValue("last_dir", os.path.dirname(sci))
    win.open_pair(sci, tmpl, **files)


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
    a.open = add_action(win, file_menu, "&Open pair...", lambda: ask_pair(win), shortcut("open"),
                     "Open a science image and its template (FITS or .fits.fz)")
    a.demo = add_action(win, file_menu, "&Demo pair", lambda: win.open_demo(), shortcut("demo"),
                     "Open the built-in simulated pair with transients")
    win.recent_menu = file_menu.addMenu("&Recent pairs")
    file_menu.addSeparator()
    a.save = add_action(win, file_menu, "&Save results...", lambda: ask_save_results(win), shortcut("save"),
                     "Save the run's results as one multi-extension FITS file")
    a.png = add_action(win, file_menu, "Save panels as &PNG...", lambda: ask_save_png(win), shortcut("png"),
                    "Save a PNG of the panel grid (or of the blink view)")
    file_menu.addSeparator()
    a.quit = add_action(win, file_menu, "&Quit", win.close, shortcut("quit"))

    run_menu = mb.addMenu("&Run")
    a.run = add_action(win, run_menu, "&Run", win.start_run, shortcut("run"), "Run the subtraction with these parameters")
    a.cancel = add_action(win, run_menu, "&Cancel", win.cancel_run, shortcut("cancel"), "Stop the running subtraction")
    a.cancel.setEnabled(False)
    a.defaults = add_action(win, run_menu, "Reset parameters to &defaults", win.form.reset_defaults)

    view = win.view_menu = mb.addMenu("&View")
    a.blink = add_action(win, view, "&Blink view", win.show_blink, shortcut("blink"), "Blink panels in one view", checkable=True)
    win.tabs.currentChanged.connect(lambda i: _sync_check(a.blink, win.tabs.currentWidget() is win.blink))
    a.reset_zoom = add_action(win, view, "&Zoom to fit", win.grid.reset_view, shortcut("zoom_fit"))
    a.maximise = add_action(win, view, "&Maximise panel", lambda: _maximise_under_cursor(win), shortcut("maximise"),
                            "Show only the panel under the mouse (or the main one); again to restore")
    layout_menu = view.addMenu("&Layout")
    for mode, text in (("main", "&Main panel with the others beside it"), ("grid", "Even &grid")):
        add_action(win, layout_menu, text, lambda checked=False, m=mode: win.toolbar.set_layout_mode(m))
    coords = view.addMenu("C&oordinates")
    group = QtGui.QActionGroup(win)
    for fmt, text in (("both", "RA/Dec in degrees and sexagesimal"), ("degrees", "RA/Dec in degrees"),
                      ("sexagesimal", "RA/Dec in sexagesimal (h:m:s d:m:s)")):
        act = add_action(win, coords, text, lambda on, f=fmt: on and win.set_radec_format(f), checkable=True)
        group.addAction(act)
        _sync_check(act, win.radec_format() == fmt)
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


def _maximise_under_cursor(win) -> None:
    g = win.grid
    if g.maximised:
        g.toggle_maximised(None)
        return
    pos = g.mapToScene(g.mapFromGlobal(QtGui.QCursor.pos()))
    p = g.panel_at(pos)
    g.toggle_maximised(p.role if p is not None else g.current_main())


def _sync_check(act, on: bool) -> None:
    act.blockSignals(True)
    act.setChecked(on)
    act.blockSignals(False)


def _show_keys(win) -> None:
    QtWidgets.QMessageBox.information(win, "Keys and mouse", help_html())


def _about(win) -> None:
    import diffgui

    QtWidgets.QMessageBox.about(win, "About diffgui",
                                f"diffgui {diffgui.__version__}<br>Image subtraction with HOTPANTS, ZOGY and SFFT.")
