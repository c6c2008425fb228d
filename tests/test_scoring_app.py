"""Scorecard after every run: Run.quality, the results header (QC*) and ``diffgui run --json``."""

import json

import numpy as np
import pytest
from astropy.io import fits
from vetting_support import standin_sfft, write_pair

from diffgui import cli
from diffgui.app import presets, scoring
from diffgui.app.pair import load_pair
from diffgui.app.results_io import load_run, save_run
from diffgui.app.run import Run
from diffgui.engine.simulation import simulate_pair


@pytest.fixture(scope="module")
def sim():
    return simulate_pair(shape=(256, 256), transients=2, seed=11)


def test_run_has_a_scorecard_in_dict_and_header(tmp_path, sim):
    files = write_pair(tmp_path, sim)
    pair = load_pair(*files)
    with standin_sfft():
        run = Run("sfft", {"kernel_shape": [5, 5]}).execute(pair)
    card = run.scorecard
    assert card is not None and run.quality["n_stars"] == card.n_stars > 0
    assert set(run.quality["metrics"]) >= {"robust_std", "peak_median", "peak_p95", "flux_left"}
    assert "scorecard" in run.timings
    assert scoring.stars_for(pair) is scoring.stars_for(pair)  # cached per pair
    out = tmp_path / "r.fits"
    save_run(run, out)
    hdr = fits.getheader(out)
    assert hdr["QCNSTAR"] == card.n_stars
    assert hdr["QCRSTD"] == pytest.approx(card.value("robust_std"), rel=1e-4)
    back = load_run(out)
    back_run = back[0] if isinstance(back, tuple) else back
    assert back_run.quality["metrics"]["peak_median"] == pytest.approx(card.value("peak_median"), rel=1e-4)


def test_cli_run_json_prints_the_scorecard(tmp_path, capsys, sim):
    files = write_pair(tmp_path, sim)
    with standin_sfft():
        p = presets.save_preset(tmp_path / "p.toml", "sfft", {"kernel_shape": [5, 5]})
        rc = cli.main(["run", "--preset", p.path, *files, "-o", str(tmp_path / "o.fits"), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    d = json.loads(cap.out)
    assert d["quality"]["n_stars"] > 0 and np.isfinite(d["quality"]["metrics"]["robust_std"])


def test_unscorable_run_is_not_a_failure():
    class FlatPair:
        def engine_inputs(self):
            rng = np.random.default_rng(2)
            return {"image": rng.normal(0, 1, (40, 40)), "template": rng.normal(0, 1, (40, 40))}

        def describe(self):
            return {}

    run = Run("x")
    run.results = {"diff": np.zeros((40, 40))}
    lines = []
    assert scoring.score_run(run, FlatPair(), lines.append) == {}
    assert run.scorecard is None and "no stars" in lines[0]
