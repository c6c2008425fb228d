"""The main window under pytest-qt (offscreen): loading, runs through the worker, cancel, errors."""

import os
import shutil
import time

import numpy as np
import pytest
from astropy.io import fits

from diffgui.app import methods
from diffgui.app.pair import Pair
from gui_support import choose_method, run_method

SHOTS = "/tmp/diffgui-shots"


def _wait_idle(qtbot, win, timeout=20000):
    qtbot.waitUntil(lambda: not win.controller.running, timeout=timeout)


def test_window_opens_with_every_method_listed(window):
    combo = window.method_panel.combo
    listed = [combo.itemData(i) for i in range(combo.count())]
    assert {"hotpants", "zogy", "sfft"} <= set(listed)
    for i, name in enumerate(listed):
        ok = methods.get(name).available
        assert combo.model().item(i).isEnabled() == ok
        if not ok:
            assert "unavailable" in combo.itemText(i)
    assert window.grid.panels["science"].display is None


def test_load_pair_from_files_shows_both_images(window, fits_pair, small_pair_arrays, qtbot):
    with qtbot.waitSignal(window.pairLoaded, timeout=5000):
        assert window.open_pair(*fits_pair)
    sci = window.grid.display("science")
    np.testing.assert_allclose(sci.source, small_pair_arrays[0].astype(np.float32))
    # science and template share their levels
    # (the same intensity scale, each offset by its own sky level)
    s_lo, s_hi = window.grid.levels_for("science")
    t_lo, t_hi = window.grid.levels_for("template")
    assert s_hi - s_lo == pytest.approx(t_hi - t_lo)
    sky_s = window.grid.panels["science"].display.sky
    sky_t = window.grid.panels["template"].display.sky
    assert s_lo - sky_s == pytest.approx(t_lo - sky_t)
    window.grid.set_cursor(40.0, 20.0)
    text = window.cursor_label.text()
    assert "x=40.0 y=20.0" in text and "RA=149.9990" in text and "Dec=+1.9989" in text and "sci=" in text and "tmpl=" in text
    assert window.recent_pairs()[0].startswith(os.path.abspath(fits_pair[0]))
    assert window.recent_menu.actions()


def test_demo_pair(window):
    assert window.open_demo(1)
    assert window.pair.shape == (512, 512) and window.grid.display("template") is not None


@pytest.mark.parametrize("kind", ["not_fits", "cube", "shapes"])
def test_bad_file_gives_message_and_window_stays_usable(window, errors, tmp_path, fits_pair, kind):
    bad = tmp_path / "bad.fits"
    if kind == "not_fits":
        bad.write_text("hello")
        other = fits_pair[1]
    elif kind == "cube":
        fits.PrimaryHDU(np.zeros((3, 8, 8), np.float32)).writeto(bad)
        other = fits_pair[1]
    else:
        fits.PrimaryHDU(np.zeros((32, 48), np.float32)).writeto(bad)
        other = fits_pair[1]
    assert not window.open_pair(str(bad), other)
    assert len(errors) == 1
    title, text = errors[0]
    assert {"not_fits": "not a FITS file", "cube": "3-D", "shapes": "different shapes"}[kind] in text
    assert window.pair is None
    assert window.open_pair(*fits_pair)  # still usable
    assert window.pair is not None


def test_fake_run_fills_every_panel_with_the_engine_arrays(window, fake_method, fits_pair, qtbot):
    window.open_pair(*fits_pair)
    run = run_method(qtbot, window, "fake")
    assert run.status == "done"
    for role in ("diff", "scorr", "noise", "convolved"):
        disp = window.grid.display(role)
        assert disp is not None, role
        assert disp.source is run.results[role]
        np.testing.assert_allclose(disp.data, run.results[role].astype(np.float32))
    assert window.grid.display("kernel") is not None
    assert window.grid.panels["scaled"].display is None
    lo, hi = window.grid.levels_for("diff")
    assert lo == -hi  # diverging map centred on zero
    assert "fake: done" in window.log_view.toPlainText()
    window.grid.set_cursor(40, 20)
    vals = window.grid.values_at(40, 20)
    assert vals["diff"] == pytest.approx(float(run.results["diff"][20, 40]))


def test_engine_error_is_a_readable_message(window, fake_method, fits_pair, errors, qtbot):
    window.open_pair(*fits_pair)
    choose_method(window, "fake")
    window.form.param("fail").setValue(True)
    with qtbot.waitSignal(window.controller.failed, timeout=5000):
        window.start_run()
    assert errors and "did not converge" in errors[-1][1]
    assert "Traceback" not in errors[-1][1]
    window.form.param("fail").setValue(False)
    assert run_method(qtbot, window, "fake").status == "done"


def test_cancel_stops_a_long_run_within_a_second(window, fake_method, fits_pair, qtbot):
    window.open_pair(*fits_pair)
    choose_method(window, "fake")
    window.form.param("delay").setValue("30")
    assert window.start_run()
    qtbot.wait(200)
    assert window.controller.running and window.method_panel.cancel_btn.isEnabled()
    t0 = time.perf_counter()
    window.cancel_run()
    qtbot.waitUntil(lambda: window.controller.active_threads() == 0, timeout=1000)
    assert time.perf_counter() - t0 < 1.0
    assert not window.controller.running and window.run is None
    assert "cancelled" in window.status_label.text()


def test_new_run_drops_the_stale_one(window, fake_method, fits_pair, qtbot):
    window.open_pair(*fits_pair)
    choose_method(window, "fake")
    window.form.param("delay").setValue("0.6")
    window.start_run()
    first = window.controller.current
    window.form.param("delay").setValue("0")
    window.form.param("scale").setValue("0.5")
    with qtbot.waitSignal(window.runFinished, timeout=5000) as blocker:
        window.start_run()
    assert blocker.args[0] is not first and blocker.args[0].params["scale"] == 0.5
    qtbot.waitUntil(lambda: window.controller.active_threads() == 0, timeout=3000)
    qtbot.wait(50)
    assert window.run is blocker.args[0]  # the stale run's result never replaced it


def test_run_without_pair_or_with_invalid_params_explains(window, errors, fake_method, fits_pair):
    assert not window.start_run()
    assert "Open a pair" in errors[-1][1]
    window.open_pair(*fits_pair)
    choose_method(window, "fake")
    window.form.param("scale").setValue("abc")
    assert not window.form.is_valid() and not window.method_panel.run_btn.isEnabled()
    assert not window.start_run()
    assert "scale" in errors[-1][1]


def test_save_results_and_png(window, fake_method, fits_pair, qtbot, tmp_path, errors):
    window.open_pair(*fits_pair)
    run_method(qtbot, window, "fake")
    out = tmp_path / "res.fits"
    assert window.save_results(str(out))
    assert fits.getval(out, "DGMETHOD") == "fake"
    assert not window.save_results(str(out))  # no silent overwrite
    assert "already exists" in errors[-1][1]
    png = window.save_panels_png(str(tmp_path / "panels.png"))
    assert os.path.getsize(png) > 5000


def test_drop_two_files_or_one_after_another(window, fits_pair):
    window.handle_dropped([fits_pair[0]])
    assert window.pair is None and "drop the template" in window.status_label.text()
    window.handle_dropped([fits_pair[1]])
    assert window.pair is not None and window.pair.template_path == fits_pair[1]


def _demo_small():
    from diffgui.engine.simulation import make_demo_pair

    sim = make_demo_pair(1, shape=(256, 256), n_transients=4)
    return Pair(sim.image, sim.template, err=sim.image_noise, template_err=sim.template_noise, name="demo 256")


_AVAILABLE = [m for m in methods.available() if m in ("hotpants", "zogy", "sfft")]


@pytest.mark.parametrize("method", _AVAILABLE or [pytest.param("none", marks=pytest.mark.skip(
    reason="no engine method is implemented yet"))])
def test_real_method_through_the_worker(window, method, qtbot, tmp_path):
    """Every available method fills its panels; the ZOGY run also writes the screenshots."""
    window.resize(1800, 1050)
    window.set_pair(_demo_small())
    run = run_method(qtbot, window, method, timeout=60000)
    info = methods.get(method)
    source = {"noise": "fpsf_err"} if method == "zogy" else {}  # ZOGY's noise map: the F_psf error
    produced = [r for r in ("diff", "scorr", "noise", "convolved", "scaled", "psf")
                if source.get(r, r) in run.arrays()]
    assert "diff" in produced and "noise" in produced  # every method shows a noise map
    for role in produced:
        assert window.grid.display(role).source is run.results[source.get(role, role)]
        assert role in window.grid.roles and info.label in window.grid.panels[role].title
    for role in ("diff", "scorr", "noise", "convolved", "scaled", "psf"):
        if role not in produced:  # nothing shown that the method cannot produce
            assert window.grid.display(role) is None and role not in window.grid.roles
    d = run.results["diff"]
    assert np.isfinite(d).mean() > 0.5 and info.label in window.status_label.text()
    if method == "zogy":
        _screenshots(window, qtbot, tmp_path, method)


def _screenshots(window, qtbot, tmp_path, method):
    """Write window_<method>.png and blink.png (copies in /tmp/diffgui-shots) to look at."""
    window.grid.set_cursor(128.0, 128.0)
    qtbot.wait(100)
    shot = window.save_window_png(str(tmp_path / f"window_{method}.png"))
    window.show_blink(True)
    qtbot.wait(50)
    assert window.blink.frames() == ["science", "template", "diff"]
    window.blink.step(2)
    assert window.blink.current() == "diff"
    qtbot.wait(50)
    blink = window.save_panels_png(str(tmp_path / "blink.png"))
    for p in (shot, blink):
        assert os.path.getsize(p) > 10000
    os.makedirs(SHOTS, exist_ok=True)
    for p in (shot, blink):
        shutil.copy(p, SHOTS)
    window.show_blink(False)


@pytest.mark.skipif("zogy" in _AVAILABLE, reason="the ZOGY run test takes the screenshots")
def test_screenshots_after_run_and_of_blink(window, fake_method, qtbot, tmp_path):
    window.resize(1800, 1050)
    window.set_pair(_demo_small())
    run_method(qtbot, window, "fake")
    _screenshots(window, qtbot, tmp_path, "fake")


@pytest.mark.parametrize("method", _AVAILABLE or [pytest.param("none", marks=pytest.mark.skip(
    reason="no engine method is implemented yet"))])
def test_cancel_a_real_method_within_a_second(window, method, qtbot):
    assert window.open_demo(1)
    choose_method(window, method)
    assert window.start_run()
    qtbot.wait(100)
    t0 = time.perf_counter()
    window.cancel_run()
    assert not window.controller.running  # the GUI is free at once
    qtbot.waitUntil(lambda: window.controller.active_threads() == 0, timeout=1000)
    assert time.perf_counter() - t0 < 1.0
    assert window.run is None and "cancelled" in window.status_label.text()


def test_thread_mode_and_unpicklable_methods_still_run(window, fake_method, fits_pair, qtbot):
    from diffgui.app import methods as registry

    window.open_pair(*fits_pair)
    window.controller.isolate = False
    run = run_method(qtbot, window, "fake")
    assert run.status == "done" and "wall_isolated" not in run.timings
    window.controller.isolate = True
    registry.register(registry.MethodInfo("lam", "Lam", func=lambda image, template, **kw: [image - template],
                                          specs=lambda: []), replace=True)
    try:
        run = run_method(qtbot, window, "lam")
        np.testing.assert_allclose(run.results["diff"], window.pair.image - window.pair.template)
    finally:
        registry.unregister("lam")
