"""Linked panels, crosshair, display options, layout, kernel modes and blinking."""

import numpy as np
import pytest
from PyQt6 import QtCore

from gui_support import run_small_pair


@pytest.fixture
def loaded(window, fake_method, small_pair_arrays, qtbot):
    return run_small_pair(qtbot, window, small_pair_arrays)


def test_pan_and_zoom_are_linked(loaded, qtbot):
    g = loaded.grid
    g.master.setRange(xRange=(10, 30), yRange=(5, 25), padding=0)
    qtbot.wait(20)
    def same_field(ref):
        (rx0, rx1), (ry0, ry1) = g.panels[ref].vb.targetRange()
        for role in ("science", "template", "diff", "scorr", "noise", "convolved"):
            vb = g.panels[role].vb
            (x0, x1), (y0, y1) = vb.viewRange()
            # same centre, at least the asked-for region, square pixels in every panel
            assert (x0 + x1) / 2 == pytest.approx((rx0 + rx1) / 2, abs=1e-6), role
            assert (y0 + y1) / 2 == pytest.approx((ry0 + ry1) / 2, abs=1e-6), role
            assert x0 <= rx0 + 1e-6 and x1 >= rx1 - 1e-6 and y0 <= ry0 + 1e-6 and y1 >= ry1 - 1e-6, role
            w, h = vb.width(), vb.height()
            if w > 1 and h > 1:
                assert (x1 - x0) / w == pytest.approx((y1 - y0) / h, rel=1e-3), role

    same_field("science")
    g.panels["diff"].vb.translateBy(x=5, y=0)  # panning any panel moves them all
    qtbot.wait(20)
    same_field("diff")
    assert g.master.targetRange()[0][0] == pytest.approx(15.0, abs=1e-6)
    kx = g.panels["kernel"].vb.viewRange()[0]
    assert kx[1] - kx[0] < 12  # the kernel keeps its own view


def test_one_crosshair_shows_every_value(loaded):
    g = loaded.grid
    g.set_cursor(40.2, 19.8)
    run = loaded.run
    for role in ("science", "template", "diff", "scorr", "noise", "convolved"):
        p = g.panels[role]
        assert p.vline.isVisible() and p.vline.value() == pytest.approx(40.2)
        assert p.value_text, role
    assert g.values_at(40.2, 19.8)["diff"] == pytest.approx(run.results["diff"][20, 40])
    assert f"{run.results['diff'][20, 40]:.4g}" in loaded.cursor_label.text()
    assert "at (40, 20)" in g.panels["kernel"].title


def test_display_options_change_levels_and_luts(loaded):
    g = loaded.grid
    lut_lin = g.lut_for("science").copy()
    loaded.toolbar.stretch.setCurrentText("asinh")
    assert not np.array_equal(g.lut_for("science"), lut_lin)
    np.testing.assert_array_equal(g.panels["science"].image.lut, g.lut_for("science"))
    z = g.levels_for("science")
    loaded.toolbar.limits.setCurrentText("minmax")
    mm = g.levels_for("science")
    assert mm[1] - mm[0] > z[1] - z[0]
    assert tuple(g.panels["science"].image.levels) == pytest.approx(mm)
    loaded.toolbar.nsigma.setValue(10)
    lo, hi = g.levels_for("diff")
    assert lo == -hi and tuple(g.panels["diff"].image.levels) == pytest.approx((lo, hi))
    # diverging colour map: the centre is white-ish, the ends differ in hue
    lut = g.lut_for("diff")
    assert lut[128, :3].min() > 200 and lut[0, 2] > lut[0, 0] and lut[-1, 0] > lut[-1, 2]


def test_layout_columns_and_panel_choice(loaded, qsettings):
    g = loaded.grid
    loaded.toolbar.columns.setValue(2)
    assert g.columns == 2 and int(qsettings.value("columns")) == 2
    assert g.ci.layout.itemAt(1, 1) is not None  # second row in use
    loaded.toolbar.columns.setValue(0)  # auto: wide grid -> many columns, tall grid -> few
    g.set_layout(mode="grid")
    g.resize(1400, 400)
    assert g.effective_columns() >= 4
    g.resize(400, 1400)
    assert g.effective_columns() <= 2
    loaded.set_panel_visible("noise", False)
    assert "noise" not in g.roles and not g.panels["noise"].container.isVisible()
    loaded.actions.panels["scaled"].setChecked(True)
    assert "scaled" in g.roles


def test_kernel_grid_mode(loaded):
    loaded.toolbar.kernel.setCurrentText("kernel grid 3x3")
    disp = loaded.grid.display("kernel")
    assert disp.shape == (3 * 7 + 2, 3 * 7 + 2)
    assert "3x3" in loaded.grid.panels["kernel"].title


def test_blink_keys_subset_and_view_kept(loaded, qtbot):
    w = loaded
    w.grid.master.setRange(xRange=(10, 30), yRange=(10, 30), padding=0)
    w.show_blink(True)
    b = w.blink
    assert b.frames() == ["science", "template", "diff"] and b.current() == "science"
    r0 = b.vb.viewRange()
    m = w.grid.master.viewRange()
    for (b0, b1), (m0, m1) in zip(r0, m):  # same centre, the grid's view inside the blink view
        assert (b0 + b1) / 2 == pytest.approx((m0 + m1) / 2, abs=0.5) and b0 <= m0 + 0.5 and b1 >= m1 - 0.5
    assert min(abs((r0[i][1] - r0[i][0]) - (m[i][1] - m[i][0])) for i in (0, 1)) < 0.5
    qtbot.keyClick(b, QtCore.Qt.Key.Key_Right)
    assert b.current() == "template"
    assert b.items["template"].isVisible() and not b.items["science"].isVisible()
    qtbot.keyClick(b, QtCore.Qt.Key.Key_Left)
    qtbot.keyClick(b, QtCore.Qt.Key.Key_Left)
    assert b.current() == "diff"
    assert b.vb.viewRange() == r0  # pan/zoom kept while stepping
    b.rate.setValue(0.05)
    qtbot.keyClick(b, QtCore.Qt.Key.Key_Space)
    assert b.playing
    seen = set()
    b.frameChanged.connect(seen.add)
    qtbot.waitUntil(lambda: len(seen) == 3, timeout=2000)
    qtbot.keyClick(b, QtCore.Qt.Key.Key_Space)
    assert not b.playing
    b.set_subset(["diff", "scorr"])
    assert b.frames() == ["diff", "scorr"]
    b.vb.setRange(xRange=(0, 16), yRange=(0, 16), padding=0)
    w.show_blink(False)
    (x0, x1), (y0, y1) = w.grid.master.viewRange()
    assert (x0 + x1) / 2 == pytest.approx(8, abs=0.5) and (y0 + y1) / 2 == pytest.approx(8, abs=0.5)
