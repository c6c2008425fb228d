"""Progress by stage (issue 14): the engine reports ``progress(stage, fraction)`` through the
logger made from ``verbose``; fractions rise monotonically to 1 for each method; the child
process relays them; the status line's times come from one clock."""

import numpy as np
import pytest

import diffgui.engine as E
from diffgui.app.progress import ProgressClock, format_seconds
from diffgui.engine.errors import make_logger
from gui_support import choose_method


class Recorder:
    """A ``verbose`` callable that also records progress reports."""

    def __init__(self):
        self.lines, self.reports = [], []

    def __call__(self, line):
        self.lines.append(line)

    def progress(self, stage, fraction):
        self.reports.append((stage, fraction))


def _check_rises_to_one(reports, stages):
    assert reports, "no progress reported"
    seen = {}
    for stage, f in reports:
        assert 0.0 <= f <= 1.0
        seen.setdefault(stage, []).append(f)
    assert set(stages) <= set(seen), seen
    for stage, fs in seen.items():
        assert all(b >= a for a, b in zip(fs, fs[1:])), (stage, fs)  # monotonic
        assert fs[-1] == pytest.approx(1.0), (stage, fs)               # ... to 1
    return seen


@pytest.fixture(scope="module")
def small():
    from diffgui.engine.simulation import simulate_pair

    return simulate_pair(shape=(96, 96), seed=3)


def test_make_logger_progress_reaches_verbose_progress_and_is_optional(capsys):
    rec = Recorder()
    log = make_logger(rec)
    log("a", 1)
    log.progress("stage", 0.5)
    make_logger(log).progress("stage", 2.0)  # a logger of a logger relays too, clipped to [0, 1]
    assert rec.lines == ["a 1"] and rec.reports == [("stage", 0.5), ("stage", 1.0)]
    for verbose in (True, False, None, print, lambda line: None):
        make_logger(verbose).progress("stage", 0.5)  # stdpipe-style verbose keeps working
    assert capsys.readouterr().out == ""


def test_zogy_reports_psfs_and_tiles(small):
    rec = Recorder()
    E.run_zogy(small.image, small.template, image_psf=small.image_psf(48, 48, 21),
               template_psf=small.template_psf(48, 48, 21), nx=2, verbose=rec)
    seen = _check_rises_to_one(rec.reports, ["ZOGY tiles", "ZOGY PSFs"])
    assert len(seen["ZOGY tiles"]) == 5  # 0 then after each of the 4 tiles


def test_sfft_reports_strips_and_iterations(small):
    rec = Recorder()
    E.run_sfft(small.image, small.template, verbose=rec)
    _check_rises_to_one(rec.reports, ["SFFT strips", "SFFT iterations"])


def test_hotpants_reports_stamps_and_regions(small):
    rec = Recorder()
    E.run_hotpants(small.image, small.template, nx=2, ny=1, verbose=rec)
    seen = _check_rises_to_one(rec.reports, ["HOTPANTS stamps", "HOTPANTS regions"])
    assert seen["HOTPANTS regions"] == [0.5, 1.0]


def test_progress_crosses_the_child_process(small):
    """execute_isolated relays the child's progress to the caller's verbose.progress."""
    from diffgui.app.isolated import execute_isolated
    from diffgui.app.pair import Pair
    from diffgui.app.run import Run

    rec = Recorder()
    run = Run("sfft", {})
    execute_isolated(run, Pair(small.image, small.template, name="small"), verbose=rec)
    assert run.status == "done"
    _check_rises_to_one(rec.reports, ["SFFT strips", "SFFT iterations"])


def test_progress_clock_estimates_the_time_left_on_one_clock():
    now = [100.0]
    clock = ProgressClock("ZOGY", clock=lambda: now[0])
    assert clock.text() == "ZOGY, 0.00 s" and clock.remaining() is None
    now[0] += 1.0
    clock.update("ZOGY tiles", 0.0)
    now[0] += 2.0
    clock.update("ZOGY tiles", 0.5)
    assert clock.remaining() == pytest.approx(2.0)  # 2 s for half the stage: 2 s left
    assert clock.text() == "ZOGY: ZOGY tiles 50 %, 3.00 s, about 2.00 s left"
    now[0] += 2.0
    clock.update("ZOGY tiles", 1.0)
    assert clock.done_text(0.5) == "ZOGY done in 5.00 s (engine 0.50 s)"  # the same clock as text()
    assert format_seconds(75.0) == "75.0 s" and format_seconds(125) == "2 min 05 s"


def test_status_bar_shows_progress_and_agrees_with_done(window, fake_method, small_pair_arrays, qtbot):
    from diffgui.app.pair import Pair

    window.set_pair(Pair(*small_pair_arrays, name="small"))
    choose_method(window, "fake")
    with qtbot.waitSignal(window.runFinished, timeout=10000):
        window.start_run()
        window.controller.progress.emit("fake stage", 0.5)  # as relayed from the worker
        assert "fake stage 50 %" in window.status_label.text()
        assert window.progress.maximum() == 1000 and window.progress.value() == 500
    text = window.status_label.text()
    assert text.startswith("Fake done in ") and "(engine " in text
    shown = float(text.split("done in ")[1].split(" s")[0])
    assert shown >= window.run.timings["total"] - 1e-6
    assert np.isfinite(shown)
