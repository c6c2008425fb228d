"""Candidate finding, features, cutouts, label files and exports (no Qt)."""

import os

import numpy as np
import pytest
from astropy.table import Table
from vetting_support import NO_METHOD, available_methods, ideal_difference, match_truth

from diffgui.app import candidates as C
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUI_DATA_DIR", str(tmp_path / "userdata"))


# ---- recovery of injected transients ------------------------------------------------------

@pytest.mark.parametrize("seed", [11, 12])
def test_ideal_difference_recovers_transients_with_few_false_positives(seed):
    sim = simulate_pair(shape=(1024, 1024), transients=30, transient_snr_range=(7.0, 80.0), seed=seed)
    diff, noise = ideal_difference(sim)
    cset = C.find_candidates(diff, noise=noise, image=sim.image, template=sim.template, threshold=5.0)
    tr = sim.transients
    strong = np.asarray(tr["ideal_snr"]) >= 7
    found, n_false = match_truth(cset.table, tr)
    assert strong.sum() >= 28
    assert found[strong].sum() >= 28, tr[strong & ~found]
    assert n_false / (1024 * 1024 / 1e6) < 5
    # fading transients are found as negative candidates, with a negative flux
    fades = tr[np.asarray(tr["kind"]) == "fade"]
    assert len(fades) >= 5
    t = cset.table
    for f in fades:
        j = np.argmin(np.hypot(t["x"] - f["x"], t["y"] - f["y"]))
        assert t["sign"][j] == -1 and t["flux"][j] < 0
    # S/N of the candidates tracks the ideal S/N (matched filter on the true PSF width)
    m = found & strong
    snr = [t["snr"][np.argmin(np.hypot(t["x"] - r["x"], t["y"] - r["y"]))] for r in tr[m]]
    ratio = np.median(np.asarray(snr) / np.asarray(tr["ideal_snr"][m]))
    assert 0.8 < ratio < 1.1


@pytest.mark.parametrize("method", available_methods() or
                         NO_METHOD)
def test_recovery_with_each_available_method(method):
    from diffgui.app.pair import Pair
    from diffgui.app.run import Run

    sim = simulate_pair(shape=(768, 768), transients=30, transient_snr_range=(7.0, 80.0), seed=5)
    pair = Pair(sim.image, sim.template, err=sim.image_noise, template_err=sim.template_noise)
    run = Run(method, {}).execute(pair)
    cset = C.candidates_for_run(run, pair, threshold=5.0)
    tr = sim.transients
    strong = np.asarray(tr["ideal_snr"]) >= 7
    found, n_false = match_truth(cset.table, tr)
    assert found[strong].sum() >= min(28, strong.sum() - 1)
    assert n_false / (768 * 768 / 1e6) < 5, cset.table


def test_isolated_search_matches_in_process_and_can_be_cancelled(small_pair_arrays):
    import threading
    import time

    from astropy.wcs import WCS

    from diffgui.app.pair import Pair
    from diffgui.engine.errors import Cancelled

    sci, tmpl = small_pair_arrays
    pair = Pair(sci, tmpl)
    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = ["RA---TAN", "DEC--TAN"], [150, 2], [32, 32], [-1e-4, 1e-4]
    pair.wcs = w
    noise = np.full(sci.shape, 3.0 * np.sqrt(2))
    run = {"diff": sci - tmpl, "noise": noise}
    here = C.candidates_for_run(run, pair, threshold=5.0)
    there = C.candidates_for_run_isolated(run, pair, threshold=5.0)
    assert len(here) >= 1 and (round(here.table["x"][0]), round(here.table["y"][0])) == (40, 20)
    assert here.table.colnames == there.table.colnames and there.meta == here.meta
    for name in here.table.colnames:
        np.testing.assert_allclose(there.table[name], here.table[name], equal_nan=True, err_msg=name)
    assert np.isfinite(there.table["ra"][0]) and there.images["science"] is pair.image
    np.testing.assert_array_equal(there.cutouts(0)["diff"], here.cutouts(0)["diff"])
    with pytest.raises(InputError, match="no difference image"):
        C.candidates_for_run_isolated({"noise": noise}, pair)
    ev = threading.Event()
    ev.set()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        C.candidates_for_run_isolated(run, pair, cancel=ev.is_set)
    assert time.perf_counter() - t0 < 1.0


def test_scorr_is_used_when_given():
    rng = np.random.default_rng(0)
    diff = rng.normal(0, 1, (200, 200))
    scorr = rng.normal(0, 1, (200, 200))
    scorr[100, 60] = 9.0
    scorr[40, 150] = -8.0
    cset = C.find_candidates(diff, scorr=scorr, threshold=5.0, fwhm=3.0)
    assert cset.meta["detection"] == "scorr"
    t = cset.table
    assert len(t) == 2
    assert (round(t["x"][0]), round(t["y"][0]), t["sign"][0]) == (60, 100, 1)
    assert (round(t["x"][1]), round(t["y"][1]), t["sign"][1]) == (150, 40, -1)
    assert t["snr"][0] == pytest.approx(9.0, rel=0.1)


def _gauss(shape, x0, y0, flux, sx, sy=None):
    sy = sx if sy is None else sy
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    g = np.exp(-0.5 * (((xx - x0) / sx) ** 2 + ((yy - y0) / sy) ** 2))
    return flux * g / g.sum()


def test_features_fwhm_ellipticity_dipole_masked_and_template_distance():
    rng = np.random.default_rng(1)
    shape = (160, 160)
    s = 3.0 / 2.3548
    diff = rng.normal(0, 1, shape)
    diff += _gauss(shape, 40.3, 40.0, 900, s)                          # clean, round
    diff += _gauss(shape, 120.0, 40.0, 900, 1.6 * s, 0.8 * s)          # elongated
    diff += _gauss(shape, 40.0, 120.0, 1500, s) - _gauss(shape, 43.0, 120.0, 1500, s)  # dipole
    diff += _gauss(shape, 120.0, 120.0, 900, s)                        # next to a mask
    mask = np.zeros(shape, bool)
    mask[118:123, 122:126] = True
    template = 100 + rng.normal(0, 1, shape) + _gauss(shape, 40.0, 40.0, 5000, s)
    cset = C.find_candidates(diff, mask=mask, fwhm=3.0, template=template, threshold=5.0)
    t = cset.table

    def near(x, y, sign=1):
        d = np.hypot(t["x"] - x, t["y"] - y) + 1000 * (t["sign"] != sign)
        j = int(np.argmin(d))
        assert d[j] < 2.0, (x, y, t)
        return t[j]

    clean = near(40.3, 40.0)
    assert clean["fwhm"] == pytest.approx(3.0, rel=0.15)
    assert clean["ellipticity"] < 0.15
    assert clean["dipole"] < 0.1 and clean["neg_frac"] < 0.2 and clean["masked_frac"] == 0
    assert clean["dist_template"] < 1.0                      # a host star in the template
    assert clean["flux"] == pytest.approx(900, rel=0.1)
    assert clean["snr"] > 20
    elong = near(120.0, 40.0)
    assert elong["ellipticity"] == pytest.approx(0.5, abs=0.12)
    assert np.isnan(elong["dist_template"])                   # nothing in the template within 30 px
    pos = near(40.0, 120.0, 1)
    neg = near(43.0, 120.0, -1)
    assert pos["dipole"] > 0.6 and neg["dipole"] > 0.6
    masked = near(120.0, 120.0)
    assert masked["masked_frac"] > 0.05 and masked["flags"] & C.FLAG_MASKED


def test_cutouts_are_centred_and_padded_with_nan():
    img = np.arange(100.0 * 120).reshape(100, 120)
    c = C.cutout(img, 10.4, 20.6, 31)
    assert c.shape == (31, 31) and c[15, 15] == img[21, 10]
    edge = C.cutout(img, 2, 3, 11)
    assert np.isnan(edge[0, 0]) and edge[5, 5] == img[3, 2]
    assert np.isnan(edge[:2]).all() and np.isfinite(edge[2:, 3:]).all()
    rng = np.random.default_rng(2)
    diff = rng.normal(0, 1, (80, 80)) + _gauss((80, 80), 30, 50, 800, 1.3)
    cset = C.find_candidates(diff, image=diff + 10, template=np.full((80, 80), 10.0), scorr=None, fwhm=3.0)
    cut = cset.cutouts(0)
    assert set(cut) == {"science", "template", "diff"} and cut["diff"].shape == (31, 31)
    assert np.unravel_index(np.argmax(np.nan_to_num(cut["diff"])), (31, 31)) == (15, 15)


def test_wcs_gives_ra_dec():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [51.0, 51.0]
    w.wcs.cdelt = [-1e-4, 1e-4]
    rng = np.random.default_rng(3)
    diff = rng.normal(0, 1, (100, 100)) + _gauss((100, 100), 50, 50, 600, 1.3)
    t = C.find_candidates(diff, fwhm=3.0, wcs=w).table
    assert t["ra"][0] == pytest.approx(150.0, abs=2e-4) and t["dec"][0] == pytest.approx(2.0, abs=2e-4)


def test_bad_inputs_are_clear():
    with pytest.raises(InputError, match="no finite pixels"):
        C.find_candidates(np.full((20, 20), np.nan))
    with pytest.raises(InputError, match="masked or not finite"):
        C.find_candidates(np.zeros((20, 20)), mask=np.ones((20, 20), bool))
    with pytest.raises(InputError, match="threshold"):
        C.find_candidates(np.zeros((20, 20)), threshold=0)
    with pytest.raises(InputError, match="noise map has shape"):
        C.find_candidates(np.zeros((20, 20)), noise=np.ones((10, 10)))


# ---- labels ---------------------------------------------------------------------------------

def _two_candidates():
    rng = np.random.default_rng(4)
    diff = rng.normal(0, 1, (120, 120)) + _gauss((120, 120), 30, 40, 900, 1.3) - _gauss((120, 120), 80, 90, 700, 1.3)
    return C.find_candidates(diff, fwhm=3.0)


@pytest.mark.parametrize("ext", [".ecsv", ".csv"])
def test_label_store_saves_after_every_change_and_undoes(tmp_path, ext):
    cset = _two_candidates()
    assert len(cset) == 2
    path = tmp_path / f"labels{ext}"
    store = C.LabelStore(path, user="tester", preset_hash="abc123")
    k0, k1 = cset.key(0), cset.key(1)
    store.set(k0, "real", cset.record(0))
    assert C.LabelStore(path).label(k0) == "real"          # on disk at once
    store.set(k1, "bogus", cset.record(1))
    store.set(k0, "skip", cset.record(0))
    again = C.LabelStore(path)
    assert (again.label(k0), again.label(k1)) == ("skip", "bogus")
    rec = again.records[k1]
    assert rec["user"] == "tester" and rec["preset_hash"] == "abc123" and rec["sign"] == -1
    assert rec["x"] == pytest.approx(cset.table["x"][1]) and rec["time"].endswith("+00:00")
    assert store.undo() == k0 and C.LabelStore(path).label(k0) == "real"
    assert store.undo() == k1 and C.LabelStore(path).label(k1) is None
    assert store.undo() == k0 and C.LabelStore(path).label(k0) is None
    assert store.undo() is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    with pytest.raises(InputError, match="unknown label"):
        store.set(k0, "maybe")


def test_labels_find_their_candidates_again_after_a_new_run(tmp_path):
    cset = _two_candidates()
    path = tmp_path / "labels.ecsv"
    store = C.LabelStore(path)
    store.set(cset.key(0), "real", cset.record(0))
    store.set("999.00_999.00_+", "bogus", {"x": 999.0, "y": 999.0, "sign": 1})  # from another run
    # the same candidates, re-found with slightly different positions
    moved = C.CandidateSet(cset.table.copy(), cset.images, cset.meta)
    moved.table["x"] += 0.4
    moved.table["y"] -= 0.3
    again = C.LabelStore(path)
    assert again.attach(moved) == 1
    assert again.label(moved.key(0)) == "real" and again.label(moved.key(1)) is None
    assert again.label("999.00_999.00_+") == "bogus"          # kept, not dropped
    assert C.LabelStore(path).label(moved.key(0)) == "real"   # re-keyed on disk


def test_reading_a_foreign_file_as_labels_is_an_error(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a diffgui label file"):
        C.LabelStore(p)


def test_labels_path_beside_the_science_image_or_in_the_user_folder(tmp_path):
    from diffgui.app.pair import Pair

    pair = Pair(np.zeros((20, 20)), np.ones((20, 20)), image_path=str(tmp_path / "a.fits"),
                template_path=str(tmp_path / "ref.fits.fz"))
    assert C.labels_path_for(pair) == str(tmp_path / "a--ref.labels.ecsv")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    pair.image_path = str(ro / "a.fits")
    p = C.labels_path_for(pair)
    assert p.startswith(str(tmp_path / "userdata" / "labels")) and "a--ref" in p
    assert C.labels_path_for(pair) == p
    mem = Pair(np.zeros((20, 20)), np.ones((20, 20)), name="demo (seed 1)")
    p1 = C.labels_path_for(mem)
    assert p1 == C.labels_path_for(Pair(np.zeros((20, 20)), np.ones((20, 20)), name="demo (seed 1)"))
    assert p1 != C.labels_path_for(Pair(np.zeros((20, 20)), np.full((20, 20), 2.0), name="demo (seed 1)"))
    assert C.labels_path_for(None, results_path=str(tmp_path / "r.fits")) == str(tmp_path / "r.labels.ecsv")


# ---- exports --------------------------------------------------------------------------------

def test_export_csv_and_regions(tmp_path):
    cset = _two_candidates()
    store = C.LabelStore(tmp_path / "l.ecsv", user="u", preset_hash="h1")
    store.set(cset.key(1), "bogus", cset.record(1))
    out = C.export_csv(tmp_path / "c.csv", cset, store, preset_hash="h1")
    t = Table.read(out, format="ascii.csv")
    assert t.colnames[:7] == ["x", "y", "ra", "dec", "label", "time", "preset_hash"]
    assert len(t) == 2 and list(t["preset_hash"]) == ["h1", "h1"]
    assert str(t["label"][1]) == "bogus" and np.ma.is_masked(t["label"][0])
    assert t["x"][0] == pytest.approx(cset.table["x"][0])
    assert "dipole" in t.colnames and "snr" in t.colnames
    with pytest.raises(FileExistsError):
        C.export_csv(tmp_path / "c.csv", cset, store)
    reg = C.export_regions(tmp_path / "c.reg", cset, store)
    lines = open(reg).read().splitlines()
    assert lines[0] == "# Region file format: DS9 version 4.1" and "image" in lines
    circles = [ln for ln in lines if ln.startswith("circle(")]
    assert len(circles) == 2
    x1 = float(circles[0].split("(")[1].split(",")[0])
    assert x1 == pytest.approx(cset.table["x"][0] + 1, abs=1e-3)   # DS9 is 1-based
    assert "color=red" in circles[1] and "dash=1" in circles[1] and "color=cyan" in circles[0]


def test_labels_survive_a_killed_process(tmp_path):
    """A process labelling as fast as it can is SIGKILLed: every label it reported is on disk,
    and the file is never truncated (each write is a synced temporary file and a rename)."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "labels.ecsv"
    code = (
        "import sys\n"
        "from diffgui.app.candidates import LabelStore\n"
        f"store = LabelStore({str(path)!r})\n"
        "for i in range(100000):\n"
        "    store.set(f'k{i}', ('real', 'bogus', 'skip')[i % 3], {'x': float(i), 'y': 1.0, 'sign': 1})\n"
        "    print(i + 1, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    acknowledged = 0
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 40:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    recs = C.LabelStore(path).records
    assert len(recs) >= acknowledged
    assert all(recs[f"k{i}"]["label"] == ("real", "bogus", "skip")[i % 3] for i in range(acknowledged))
