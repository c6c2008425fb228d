"""The scorecard dock in the main window (pytest-qt, offscreen)."""

import numpy as np

from diffgui.engine.common.quality import METRIC_INFO
from gui_support import choose_method, run_method


def _run(qtbot, win, method, timeout=30000):
    return run_method(qtbot, win, method, timeout)


def test_scorecard_dock_follows_runs_and_pairs(window, fake_method, qtbot):
    assert window.scorecard.card is None
    assert window.open_demo()
    run = _run(qtbot, window, "fake")
    card = window.scorecard.card
    assert card is run.scorecard and card is not None and card.n_stars > 0
    tab = window.scorecard.table
    assert tab.rowCount() == len(METRIC_INFO)
    row = list(METRIC_INFO).index("robust_std")
    assert tab.item(row, 1).text() == card.metrics["robust_std"].text()
    assert "Ideal 1.0" in tab.item(row, 0).toolTip()
    assert tab.item(row, 2).text() in ("ok", "check")
    assert window.scorecard.tiles.rowCount() == card.tile_map.shape[0]
    assert np.isfinite(card.value("peak_median"))
    window.open_demo(seed=2)  # a new pair clears the scorecard
    assert window.scorecard.card is None and "New pair" in window.scorecard.summary.text()


def test_field_diagnostics_dialog_and_its_errors(window, errors, qtbot):
    window.scorecard.diagnose.click()  # no pair: a message, no crash
    assert errors and errors[-1][0] == "No pair"
    assert window.open_demo()
    window.scorecard.diagnose.click()
    dlg = window.diagnostics_dialog
    assert dlg.isVisible() and dlg.diag.n_matched >= 10 and dlg.diag.advice
    assert dlg.tables["science_fwhm"].rowCount() == 3
    assert dlg.advice.text().startswith(dlg.diag.advice[0])
    dlg.close()


def test_history_show_again_ab_and_keep_preset(window, fake_method, qtbot, tmp_path, errors):
    from diffgui.app import presets

    assert window.open_demo()
    r1 = _run(qtbot, window, "fake")
    window.form.set_values({"scale": 0.5})
    with qtbot.waitSignal(window.runFinished, timeout=30000) as blocker:
        assert window.start_run()
    r2 = blocker.args[0]
    hist = window.history
    assert len(hist.history) == 2 and hist.table.rowCount() == 2
    assert hist.table.item(1, 2).text() == "scale=0.5"
    assert hist.ab_selected() is None and errors[-1][0] == "A/B"  # nothing selected: a message
    with qtbot.waitSignal(window.runFinished, timeout=10000):
        hist.show_index(0)  # show the first run again: not added twice
    assert window.run is r1 and len(hist.history) == 2 and window.scorecard.card is r1.scorecard
    ab = hist.open_ab(0, 1)
    assert ab.isVisible() and ab.mode == "split"
    ab.divider.setValue(10)
    comp = ab.composite()
    assert (comp[:, :10] == r1.results["diff"][:, :10]).all()
    assert (comp[:, 10:] == r2.results["diff"][:, 10:]).all()
    ab.set_mode("blink")
    first = ab.composite()
    ab.toggle()
    assert first is not ab.composite()
    rows = {r.key: r for r in ab.rows}
    assert set(rows) >= {"robust_std", "peak_median"}
    out = tmp_path / "kept.toml"
    window.form.set_values({"scale": 1.0})
    # the test double has no preset schema: its settings go to the form, saving says why not
    assert not hist.keep_as_preset(r2, str(out)) and errors[-1][0] == "Cannot save the preset"
    assert window.form.values()["scale"] == 0.5 and not out.exists()
    run_z = type(r2)(method="zogy", params={"nx": 3, "ny": 3})
    assert hist.keep_as_preset(run_z, str(out)), errors[-1]
    assert presets.load_preset(out).params["nx"] == 3
    ab.close()
    assert hist.export(str(tmp_path / "h.csv")) and not hist.export(str(tmp_path / "h.csv"))
    window.open_demo(seed=3)
    assert len(hist.history) == 0 and hist.table.rowCount() == 0


def test_suggest_settings_applies_and_undoes(window, qtbot, errors):
    from diffgui.app import methods

    if not methods.get("sfft").available:
        import pytest
        pytest.skip("SFFT not available")
    window.scorecard.suggest.click()
    dlg = window.tune_dialog
    assert not dlg.start() and errors[-1][0] == "Suggest settings"  # no pair yet
    assert window.open_demo()
    choose_method(window, "sfft")
    dlg.budget.setValue(1)
    before = window.form.values()
    assert dlg.start()
    qtbot.waitUntil(lambda: dlg.result is not None, timeout=60000)
    assert "runs in" in dlg.text.toPlainText()
    dlg.result.best = dlg.result.trials[0]
    dlg.result.best.params = {**dlg.result.best.params, "bg_poly_order": 0}
    dlg.apply_best()
    assert window.form.values()["bg_poly_order"] == 0
    dlg.undo()
    assert window.form.values() == before
    dlg.close()


def test_region_preview_in_the_window(window, fake_method, qtbot, errors):
    pv = window.preview
    pv.toggle.setChecked(True)  # no pair: a message, the button pops out
    assert errors[-1][0] == "Region preview" and not pv.toggle.isChecked()
    assert window.open_demo()
    choose_method(window, "fake")
    pv.toggle.setChecked(True)
    assert pv.roi is not None
    pv.roi.setPos((10, 10))
    pv.roi.setSize((100, 80))
    assert pv.start()
    qtbot.waitUntil(lambda: pv.last is not None, timeout=20000)
    assert pv.last.results["diff"].shape == (80, 100) and "PREVIEW" in pv.mark.text()
    pv.roi.setSize((10, 10))  # too small: a message, no crash
    assert not pv.start() and "at least" in pv.mark.text()
    pv.toggle.setChecked(False)
    assert pv.roi is None and pv.model is None
