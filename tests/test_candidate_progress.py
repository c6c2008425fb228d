"""Progress of the candidate search (issue 14): :func:`find_candidates` reports named stages
through ``verbose.progress(stage, fraction)``, each rising monotonically to 1; the child process
of :func:`candidates_for_run_isolated` relays them; the window shows them in its determinate
progress bar with the time left and ends on a "done in" time that agrees with the running one."""

import re
import time

import numpy as np
import pytest

from diffgui.app import candidates as C
from diffgui.engine.errors import Cancelled


class Recorder:
    """A ``verbose`` callable that also records progress reports."""

    def __init__(self, stop_at=None):
        self.lines, self.reports = [], []
        self.stop_at = stop_at

    def __call__(self, line):
        self.lines.append(line)

    def progress(self, stage, fraction):
        self.reports.append((stage, fraction))

    def cancel(self):
        return self.stop_at is not None and self.stop_at in self.reports


def _stages(reports):
    """Fractions per stage, checking each rises monotonically from 0 to exactly 1 and the stages
    come once each, in :data:`C.SEARCH_STAGES` order."""
    seen = {}
    order = []
    for stage, f in reports:
        assert 0.0 <= f <= 1.0
        if not order or order[-1] != stage:
            assert stage not in seen, f"stage {stage!r} came back: {reports}"
            order.append(stage)
        seen.setdefault(stage, []).append(f)
    assert tuple(order) == C.SEARCH_STAGES
    for stage, fs in seen.items():
        assert fs[0] == 0.0 and fs[-1] == 1.0, (stage, fs)
        assert all(b >= a for a, b in zip(fs, fs[1:])), (stage, fs)
    return seen


@pytest.fixture(scope="module", autouse=True)
def _fork_server():
    """Start the fork server now: it imports the engine while the in-process tests run."""
    from diffgui.app.isolated import warm_up

    warm_up()


@pytest.fixture(scope="module")
def sim():
    from diffgui.engine.simulation import simulate_pair

    return simulate_pair(shape=(192, 192), transients=12, transient_snr_range=(8.0, 40.0), seed=5)


@pytest.fixture(scope="module")
def unmatched(sim):
    """A difference without PSF matching: hundreds of (star residual) candidates."""
    return sim.image - sim.template, np.hypot(sim.image_noise, sim.template_noise)


def test_find_candidates_reports_every_stage_rising_to_one(sim, unmatched):
    diff, noise = unmatched
    rec = Recorder()
    cset = C.find_candidates(diff, noise=noise, image=sim.image, template=sim.template, verbose=rec)
    seen = _stages(rec.reports)
    n = len(cset)
    assert n > 100
    # measured in chunks: one report per chunk of at least 16 candidates, about 20 in all
    for stage in ("measuring", "template sources"):
        steps = seen[stage][1:]
        assert len(steps) == len(range(0, n, max(16, -(-n // 20))))
        assert 10 <= len(steps) <= 21
    plain = C.find_candidates(diff, noise=noise, image=sim.image, template=sim.template)
    for col in C.COLUMNS:  # reporting progress changes nothing in the result
        assert np.array_equal(np.asarray(plain.table[col]), np.asarray(cset.table[col]), equal_nan=True), col


@pytest.mark.parametrize("case", ["scorr", "template_objects", "none_found"])
def test_every_path_of_the_search_reaches_one(sim, unmatched, case):
    diff, noise = unmatched
    rec = Recorder()
    if case == "scorr":
        cset = C.find_candidates(diff, scorr=diff / noise, signs=(1,), verbose=rec)
    elif case == "template_objects":
        cset = C.find_candidates(diff, fwhm=3.0, template_objects=sim.stars, verbose=rec)
    else:
        cset = C.find_candidates(diff, noise=noise, threshold=1e5, verbose=rec)
    seen = _stages(rec.reports)
    assert (len(cset) == 0) == (case == "none_found")
    if case != "none_found":
        assert seen["template sources"] == [0.0, 1.0]  # a catalogue: one k-d tree query


def test_verbose_true_prints_nothing_and_cancel_stops_between_chunks(unmatched, capsys):
    diff, noise = unmatched
    C.find_candidates(diff, noise=noise, verbose=True)
    assert capsys.readouterr().out == ""  # progress needs a .progress method; no lines printed
    rec = Recorder(stop_at=("measuring", 0.0))
    with pytest.raises(Cancelled):
        C.find_candidates(diff, noise=noise, verbose=rec, cancel=rec.cancel)
    assert rec.reports[-1] == ("measuring", 0.0)  # stopped before the first chunk


def test_the_child_process_relays_the_stages(sim, unmatched):
    """candidates_for_run_isolated: the child's reports reach the caller's verbose.progress."""
    from diffgui.app.pair import Pair

    cut = (slice(0, 96), slice(0, 128))  # smaller: the cost is the child's start, not the search
    diff, noise = (a[cut] for a in unmatched)
    pair = Pair(sim.image[cut], sim.template[cut], name="sim")
    run = {"diff": diff, "noise": noise}
    rec = Recorder()
    cset = C.candidates_for_run_isolated(run, pair, verbose=rec)
    seen = _stages(rec.reports)
    assert len(seen["measuring"]) >= 4  # 0 and at least three chunks
    local = C.candidates_for_run(run, pair)
    assert len(cset) == len(local) >= 48
    assert np.array_equal(np.asarray(cset.table["x"]), np.asarray(local.table["x"]))


_SECONDS = re.compile(r"Candidates(?::[^,]*)?, ([0-9.]+) s")


def test_window_shows_the_search_stages_and_agreeing_times(window, fake_method, small_pair_arrays, qtbot):
    from diffgui.app.pair import Pair
    from gui_support import choose_method

    window.set_pair(Pair(*small_pair_arrays, name="small"))
    choose_method(window, "fake")
    bar, seen = window.progress, []

    def record(value):
        if window.vetting.clock is not None:  # the candidate search owns the bar
            seen.append((bar.minimum(), bar.maximum(), value, bar.format(), window.status_label.text()))
            assert bar.fontMetrics().horizontalAdvance(bar.text()) < bar.width()  # "stage %" not clipped

    bar.valueChanged.connect(record)
    t0 = time.perf_counter()
    with qtbot.waitSignal(window.vetting.candidatesReady, timeout=20000):
        assert window.start_run()
        window.controller.progress.emit("fake stage", 0.5)  # as relayed from the run's worker
        run_running = float(window.status_label.text().split("fake stage 50 %, ")[1].split(" s")[0])
    wall = time.perf_counter() - t0
    assert seen, "the search never showed progress"
    assert all(lo == 0 and hi == 1000 for lo, hi, *_ in seen)  # determinate, never the busy bar
    assert seen[-1][2] == 1000 and "template sources" in seen[-1][3]
    stages = [fmt.split(" %p%")[0] for _, _, _, fmt, _ in seen]
    assert set(stages) <= set(C.SEARCH_STAGES) and "measuring" in stages
    text = window.status_label.text()
    assert text.startswith("Fake done in ") and " · Candidates done in " in text
    assert run_running <= float(text.split("Fake done in ")[1].split(" s")[0])  # the run's times agree too
    done = float(text.split("Candidates done in ")[1].split(" s")[0])
    running = [float(m.group(1)) for *_, t in seen for m in [_SECONDS.search(t)] if m]
    assert running and max(running) <= done <= wall  # one clock: the done time is never shorter
    assert not bar.isVisible() and window.vetting.clock is None
    log = window.log_view.toPlainText()
    assert f"; Candidates done in {text.split('Candidates done in ')[1]}" in log  # the log says the same


def test_a_new_pair_during_the_search_drops_its_progress(window, fake_method, small_pair_arrays, qtbot):
    from diffgui.app.pair import Pair
    from gui_support import choose_method

    window.set_pair(Pair(*small_pair_arrays, name="small"))
    choose_method(window, "fake")
    with qtbot.waitSignal(window.runFinished, timeout=20000):
        assert window.start_run()
    assert window.vetting.clock is not None and window.progress.isVisible()  # the search started
    assert window.progress.maximum() == 1000 and "Candidates: preparing" in window.status_label.text()
    window.set_pair(Pair(*small_pair_arrays, name="other"))
    assert window.vetting.clock is None and not window.progress.isVisible()
    qtbot.wait(300)  # late reports of the dropped search change nothing
    assert not window.progress.isVisible() and "Candidates" not in window.status_label.text()
