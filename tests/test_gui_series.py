"""Series tools in the window: align offer, batch dialog, light-curve plot."""

import numpy as np
import pytest
from astropy.table import Table
from test_registration import star_field

from diffgui.app.pair import Pair
from diffgui.engine.common.registration import Transform

pytestmark = pytest.mark.gui


def shifted_pair():
    tmpl = star_field(shape=(160, 160), n=120)
    sci = star_field(Transform.shift(3.4, -2.2), shape=(160, 160), n=120)
    return Pair(sci, tmpl, name="shifted")


def test_misaligned_pair_is_offered_registration(window, qtbot):
    from diffgui.engine.common.alignment import measure_offset
    from diffgui.gui import series

    window.set_pair(shifted_pair())
    btn = getattr(window, "_align_button", None)
    assert btn is not None and "Align" in btn.text()
    btn.click()
    assert window._align_button is None
    off = measure_offset(window.pair.image, window.pair.template, window.pair.mask, rotation=False)
    assert abs(off.dx) < 0.1 and abs(off.dy) < 0.1
    assert window.pair.image_header["REGMETH"] == "stars"
    assert series.align_current(window)  # aligning again is harmless


def test_batch_dialog_runs_and_opens_a_result(window, qtbot, tmp_path):
    from astropy.io import fits

    from diffgui.gui.series import BatchDialog

    tmpl = star_field(shape=(128, 128), n=80)
    paths = []
    for i, (dx, dy) in enumerate(((0.0, 0.0), (2.3, -1.6))):
        p = tmp_path / f"f{i}.fits"
        fits.PrimaryHDU(star_field(Transform.shift(dx, dy), shape=(128, 128), n=80, seed=3).astype(np.float32),
                        header=fits.Header({"GAIN": 2.0, "MJD-OBS": 60000.0 + i})).writeto(p)
        paths.append(str(p))
    tp = tmp_path / "t.fits"
    fits.PrimaryHDU(tmpl.astype(np.float32), header=fits.Header({"GAIN": 2.0})).writeto(tp)
    dlg = BatchDialog(window)
    qtbot.addWidget(dlg)
    dlg.set_inputs(paths, tp, tmp_path / "out", method="hotpants", workers=1)
    assert dlg.start()
    qtbot.waitUntil(lambda: dlg.start_btn.isEnabled(), timeout=60000)
    assert [r.status for r in dlg.results] == ["done", "done"], dlg.status.text()
    assert dlg.bar.value() == 2 and "2 done" in dlg.status.text()
    dlg._open_row(1, 0)
    assert window.run is not None or window._staging[0] is not None


def test_light_curve_window_and_png(window, qtbot, tmp_path, monkeypatch):
    from diffgui.gui import series

    t = Table({"time": [2456471.5, 2456472.5, 2456473.5], "flux": [1.0, 5.0, 2.0], "flux_err": [0.5, 0.5, 0.5],
               "file": ["a.fits", "b.fits", "c.fits"]})
    opened = []
    monkeypatch.setattr(series, "open_result", lambda win, path: opened.append(path))
    lw = series.LightCurveWindow(window, t)
    qtbot.addWidget(lw)
    lw.show()
    pts = lw.points.points()
    lw._clicked(lw.points, [pts[1]])
    assert opened == ["b.fits"]
    png = series.render_light_curves([t], ["test"], str(tmp_path / "lc.png"))
    assert (tmp_path / "lc.png").stat().st_size > 1000 and png.endswith("lc.png")
