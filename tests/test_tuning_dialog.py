"""The Suggest settings dialog passes its region choice to ``tune`` (pytest-qt, offscreen)."""

from diffgui.app import tuning


def test_dialog_scores_on_the_chosen_regions(window, qtbot, monkeypatch):
    seen = {}

    def fake_tune(pair, method, base, budget=60.0, *, verbose=None, cancel=None, regions=5, **kw):
        seen.update(method=method, budget=budget, regions=regions)
        t = tuning.Trial(changes={}, params=dict(base), quality={"metrics": {"peak_median": 0.7}}, objective=1.0)
        return tuning.TuneResult(method, dict(base), [t], t, t, 0.1)

    monkeypatch.setattr(tuning, "tune", fake_tune)
    window.scorecard.suggest.click()
    dlg = window.tune_dialog
    assert dlg.regions.currentData() == 5  # corners and centre by default
    assert window.open_demo()
    dlg.regions.setCurrentIndex(dlg.regions.findData(9))
    dlg.budget.setValue(7)
    assert dlg.start()
    qtbot.waitUntil(lambda: dlg.result is not None, timeout=10000)
    assert seen["regions"] == 9 and seen["budget"] == 7
    text = dlg.text.toPlainText()
    assert "whole frame" in text and "best: the current settings" in text
    assert not dlg.apply_button.isEnabled()  # nothing better: nothing to apply
    dlg.close()
