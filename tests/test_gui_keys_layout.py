"""Issue 14: one key table, vetting keys whatever has the focus, panels per method,
titles and readouts cleared by a new pair, colour bars, layout, coordinates, no display."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PyQt6 import QtCore, QtWidgets
from PyQt6.QtCore import Qt

from diffgui.app.pair import Pair
from diffgui.gui import keys
from diffgui.gui.window_layout import format_radec, sexagesimal
from gui_support import run_small_pair
from shared_paths import DATA

MEERLICHT = DATA / "meerlicht-vetting"


@pytest.fixture
def vetting(window, tmp_path):
    """The window with a 4-item cutout collection in the vetting view (a copy in tmp_path)."""
    if not MEERLICHT.is_dir():
        pytest.skip("shared MeerLICHT cutouts not present")
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for p in MEERLICHT.glob("*.npz"):
        shutil.copy(p, folder)
    assert window.vetting.open_collection(str(folder))
    window.vetting_dock.show()
    window.vetting_dock.raise_()
    QtWidgets.QApplication.processEvents()
    assert window.vetting_view.isVisible()
    return window


def _focus_targets(win):
    """Widgets a user may have clicked last: an image, a panel, the form, the table."""
    return {"image": win.grid.viewport(), "panel": win.method_panel.combo,
            "form": win.form, "table": win.vetting_view.table}


@pytest.mark.parametrize("where", ["image", "panel", "form", "table"])
def test_every_vetting_key_works_after_clicking_anywhere(vetting, qtbot, where):
    win = vetting
    view = win.vetting_view
    target = _focus_targets(win)[where]
    qtbot.mouseClick(target, Qt.MouseButton.LeftButton, pos=QtCore.QPoint(5, 5))
    target.setFocus()
    view.select_proxy_row(0)
    for letter, label in (("R", "real"), ("B", "bogus"), ("S", "skip")):
        key = view.current_key()
        qtbot.keyClick(target, getattr(Qt.Key, f"Key_{letter}"))
        assert view.store.label(key) == label, (where, letter)
        assert view.current_key() != key  # moved on to the next item
    qtbot.keyClick(target, Qt.Key.Key_U)  # undo the skip: back on that item, unlabelled
    assert view.current_key() == key and view.store.label(key) is None
    view.select_proxy_row(1)
    qtbot.keyClick(target, Qt.Key.Key_N)
    assert view.table.currentIndex().row() == 2
    qtbot.keyClick(target, Qt.Key.Key_P)
    assert view.table.currentIndex().row() == 1
    qtbot.keyClick(target, Qt.Key.Key_Question)
    assert view.overlay.isVisible()
    qtbot.keyClick(target, Qt.Key.Key_Escape)  # Esc closes the help whatever has the focus
    assert not view.overlay.isVisible()
    assert win.tabs.currentWidget() is win.grid  # B labelled: it never opened the blink view


def test_vetting_keys_off_while_the_dock_is_hidden_and_in_text_fields(vetting, qtbot):
    win = vetting
    view = win.vetting_view
    key = view.current_key()
    win.vetting_dock.hide()
    qtbot.keyClick(win.grid.viewport(), Qt.Key.Key_R)
    assert view.store.label(key) is None
    win.vetting_dock.show()
    edit = QtWidgets.QLineEdit(win)  # a text field: letters are text there
    edit.show()
    qtbot.keyClick(edit, Qt.Key.Key_R)
    assert edit.text() == "r" and view.store.label(key) is None


def test_help_texts_and_shortcuts_come_from_the_key_table(window, monkeypatch):
    shown = {}
    monkeypatch.setattr(QtWidgets.QMessageBox, "information",
                        staticmethod(lambda parent, title, text, *a: shown.update({title: text})))
    help_action = next(a for m in window.menuBar().actions() if m.text() == "&Help"
                       for a in m.menu().actions() if "Keys" in a.text())
    help_action.trigger()
    text = shown["Keys and mouse"]
    assert text == keys.help_html()
    for k in keys.KEYS:
        assert f"<b>{k.label}</b>" in text and k.text in text
    overlay = window.vetting_view.overlay.text()
    for k in keys.KEYS:
        if k.context == "vetting":
            assert f"<b>{k.label}</b>" in overlay and k.text in overlay
    a = window.actions
    for name, act in (("run", a.run), ("blink", a.blink), ("open", a.open), ("zoom_fit", a.reset_zoom),
                      ("maximise", a.maximise)):
        assert act.shortcut().toString() == keys.shortcut(name)
    # no window shortcut collides with a vetting key
    vetting_keys = {k for e in keys.KEYS if e.context == "vetting" for k in e.keys}
    window_keys = {k for e in keys.KEYS if e.context == "window" for k in e.keys}
    assert not (vetting_keys - {"Esc"}) & window_keys
    assert keys.shortcut("blink") == "Ctrl+B"
    for name in ("real", "bogus", "skip", "undo", "next", "previous"):
        assert f"({keys.entry(name).keys[0]})" in window.vetting_view.buttons[name].toolTip()


@pytest.fixture
def ran(window, fake_method, small_pair_arrays, qtbot):
    return run_small_pair(qtbot, window, small_pair_arrays)


def test_new_pair_clears_results_titles_crosshair_and_readouts(ran, small_pair_arrays):
    g = ran.grid
    g.set_cursor(40.0, 20.0)
    assert "Fake" in g.panels["diff"].title and "at (40, 20)" in g.panels["kernel"].title
    assert ran.cursor_label.text() and g.panels["diff"].vline.isVisible()
    sci, tmpl = small_pair_arrays
    ran.set_pair(Pair(sci + 1.0, tmpl, name="other"))
    for role, p in g.panels.items():
        assert p.title == p.default_title, role
        assert not p.vline.isVisible() and not p.value_text
        if role not in ("science", "template"):
            assert p.display is None and not p.colorbar.isVisible()
    assert ran.cursor_label.text() == "" and g.cursor is None


def test_switching_methods_shows_only_that_methods_panels(window):
    from diffgui.app import methods

    expected = {"zogy": ["science", "template", "diff", "scorr", "noise", "psf", "image_psf", "template_psf"],
                "sfft": ["science", "template", "diff", "scaled", "noise", "convolved", "kernel"],
                "hotpants": ["science", "template", "diff", "scaled", "noise", "convolved", "kernel"]}
    for name, roles in expected.items():
        if not methods.get(name).available:
            continue
        window.method_panel.set_method(name)
        assert window.grid.roles == roles, name
        shown = [r for r, p in window.grid.panels.items() if p.container.isVisible()]
        assert sorted(shown) == sorted(roles)
        assert window.actions.panels["scorr"].isChecked() == ("scorr" in roles)


def test_colour_bars_follow_limits_and_stretch(ran):
    from diffgui.gui.imaging import make_lut

    g = ran.grid
    for role in ("science", "diff", "noise"):
        p = g.panels[role]
        assert p.colorbar.isVisible()
        assert p.colorbar.levels() == pytest.approx(g.levels_for(role))
    ran.toolbar.stretch.setCurrentText("asinh")
    ran.toolbar.nsigma.setValue(3.0)
    p = g.panels["diff"]
    assert p.colorbar.levels() == pytest.approx(g.levels_for("diff"))
    lut = make_lut("CET-D1A", "asinh", True)
    cmap_lut = p.colorbar.colorMap().getLookupTable(0.0, 1.0, nPts=256, alpha=False)
    assert np.abs(cmap_lut.astype(int) - lut[:, :3].astype(int)).max() <= 2


def test_view_kept_across_runs_and_double_click_maximises(ran, qtbot):
    g = ran.grid
    g.master.setRange(xRange=(10, 30), yRange=(10, 30), padding=0)
    before = g.master.targetRange()
    with qtbot.waitSignal(ran.runFinished, timeout=10000):
        ran.start_run()
    assert np.allclose(g.master.targetRange(), before)  # no zoom onto a candidate after a run
    main = g.current_main()
    assert main == "diff"
    g.toggle_maximised("noise")
    assert [r for r, p in g.panels.items() if p.container.isVisible()] == ["noise"]
    g.toggle_maximised("noise")
    assert sorted(r for r, p in g.panels.items() if p.container.isVisible()) == sorted(g.roles)


def test_main_panel_gets_the_space(ran, qtbot):
    ran.resize(1366, 768)
    ran.vetting_dock.hide()
    qtbot.wait(50)
    g = ran.grid
    assert g._laid_out[0] == "main"
    vb = g.panels[g.current_main()].vb
    drawn = min(vb.width(), vb.height())  # a square image drawn at the full size its view allows
    assert drawn / ran.width() >= 0.40
    assert vb.width() / g.width() >= 0.45


def test_window_fits_the_screen_and_remembers_its_layout(qtbot, qsettings, errors):
    from diffgui.gui.main_window import MainWindow

    win = MainWindow(settings=qsettings)
    qtbot.addWidget(win)
    avail = win.screen().availableGeometry()
    assert win.width() <= avail.width() and win.height() <= avail.height()
    win.show()
    win.resize(900, 600)
    win.method_dock.hide()
    QtWidgets.QApplication.processEvents()
    size = (win.width(), win.height())
    win.close()
    assert qsettings.value("window/geometry") is not None
    win2 = MainWindow(settings=qsettings)
    qtbot.addWidget(win2)
    assert win2.height() == size[1]  # remembered ...
    assert win2.width() == min(size[0], avail.width() - 8)  # ... and kept on the screen (frame allowance)
    assert win2.method_dock.isHidden()
    assert not win2.vetting_view.buttons["csv"].isEnabled()  # nothing to export yet
    assert not win2.vetting_view.buttons["regions"].isEnabled()


def test_radec_in_degrees_and_sexagesimal(window, fits_pair):
    assert sexagesimal(150.0, 2.0) == "10:00:00.00 +02:00:00.0"
    assert sexagesimal(0.0, -0.5) == "00:00:00.00 -00:30:00.0"
    assert format_radec(150.0, 2.0, "degrees") == "RA=150.000000 Dec=+2.000000"
    assert format_radec(150.0, 2.0, "sexagesimal") == "RA=10:00:00.00 Dec=+02:00:00.0"
    window.open_pair(*fits_pair)
    window.grid.set_cursor(31.0, 31.0)  # CRPIX 32 (1-based): the reference pixel
    assert "RA=150.000000 Dec=+2.000000 (10:00:00.00 +02:00:00.0)" in window.cursor_label.text()
    window.set_radec_format("sexagesimal")
    assert "RA=10:00:00.00 Dec=+02:00:00.0" in window.cursor_label.text()
    assert window.settings.value("radec_format") == "sexagesimal"


def test_no_display_exits_2_with_the_ways_out(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "diffgui", "--demo"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=os.getcwd())
    assert proc.returncode == 2
    assert "QT_QPA_PLATFORM=offscreen" in proc.stderr and "--screenshot" in proc.stderr
    assert "DISPLAY" in proc.stderr and "Xvfb" in proc.stderr


def test_screenshot_after_a_real_run_gives_the_main_image_the_space(window, qtbot, tmp_path):
    """One size here (bench/window_screenshots.py writes docs/ at 1920x1080 and 1366x768)."""
    from diffgui.app import methods

    sci = DATA / "pydia-bulge-kb13475" / "pairs" / "0130_vs_0178_sci.fits"
    if not sci.exists() or not methods.get("sfft").available:
        pytest.skip("pyDIA pair or SFFT not available")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__))))
    from bench.window_screenshots import measure

    window.resize(1366, 768)
    assert window.open_pair(str(sci), str(sci).replace("_sci", "_ref"))
    window.method_panel.set_method("sfft")
    with qtbot.waitSignal(window.runFinished, timeout=120000):
        window.start_run()
    window.vetting.stop()
    window.vetting_dock.hide()
    qtbot.wait(100)
    fig = measure(window)
    assert fig["main_panel"] == "diff" and fig["main_fraction"] >= 0.45, fig
    assert fig["controls_outside"] == [] and fig["elided_titles"] == [], fig
    path = tmp_path / "window-pydia-1366x768.png"
    assert window.grab().save(str(path)) and path.stat().st_size > 50000
    os.makedirs("/tmp/diffgui-shots", exist_ok=True)
    shutil.copy(path, "/tmp/diffgui-shots")
