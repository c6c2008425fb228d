"""``diffgui tune`` and diffgui.app.tuning: search space, objective, a short real search."""

import json
import math

import numpy as np
import pytest
from vetting_support import write_pair

from diffgui import cli
from diffgui.app import presets, tuning
from diffgui.app.pair import Pair, load_pair
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair


@pytest.fixture(scope="module")
def sim():
    # a PSF whose FWHM grows by 60 % across x: a constant kernel cannot match it
    return simulate_pair(shape=(256, 256), n_stars=260, image_fwhm=3.4, template_fwhm=2.4,
                         image_fwhm_gradient=(0.6, 0.0), image_gain=2.0, template_gain=10.0,
                         seed=3)


@pytest.fixture(scope="module")
def pair(sim):
    return Pair(image=sim.image, template=sim.template, name="sim")


@pytest.mark.parametrize("method", ["hotpants", "zogy", "sfft"])
def test_every_method_has_a_documented_space(method):
    space = tuning.stages(method, {})
    assert len(space) >= 3
    for name, options in space:
        assert name in tuning.__doc__ or name.split("/")[0].split("=")[0] in tuning.__doc__
        assert len(options) >= 3 and all(isinstance(make({}), dict) for make in options)


def test_unknown_method_and_bad_budget(pair):
    with pytest.raises(InputError, match="no tuning space"):
        tuning.tune(pair, "nope")
    with pytest.raises(InputError, match="budget"):
        tuning.tune(pair, "sfft", budget=0)


def test_objective_orders_runs():
    good = {"metrics": {"peak_median": 0.67, "peak_p95": 1.96, "robust_std": 1.0, "flux_left": 0.0}}
    bad = {"metrics": {"peak_median": 1.8, "peak_p95": 7.0, "robust_std": 1.0, "flux_left": 0.0}}
    off = {"metrics": {"peak_median": 0.67, "peak_p95": 1.96, "robust_std": 1.6, "flux_left": 0.1}}
    assert tuning.objective(good) < tuning.objective(off) < tuning.objective(bad) + 10
    assert tuning.objective(good) < tuning.objective(bad)
    assert tuning.objective({}) == math.inf


def test_too_few_stars_is_a_clear_error():
    rng = np.random.default_rng(0)
    flat = Pair(image=rng.normal(100, 5, (96, 96)), template=rng.normal(100, 5, (96, 96)), name="flat")
    with pytest.raises(InputError, match="no stars|stars to score"):
        tuning.tune(flat, "hotpants", budget=5)


def test_hotpants_search_finds_the_spatial_order(pair):
    lines = []
    res = tuning.tune(pair, "hotpants", {"backend": "native", "image_gain": 2.0, "template_gain": 10.0},
                      budget=60.0, max_trials=3, verbose=lines.append)
    assert res.trials[0] is res.default and len(res.trials) == 3 and len(lines) == 4  # + the regions line
    assert lines[0].strip().startswith("scored on 5 regions") and res.sample is not None
    assert res.best.objective <= res.default.objective
    assert res.default.quality["metrics"]["peak_median"] > 1.0  # ko 0 leaves the stars
    assert res.improved and res.best.params["extra"]["ko"] >= 1
    assert tuning.no_worse(res.best.quality, res.default.quality)  # on every score
    base_run, best_run = res.as_user  # and so as the user will run it (its own stars)
    assert tuning.no_worse(best_run.quality, base_run.quality)
    before, after = (t.quality["metrics"]["peak_median"] for t in (res.default, res.best))
    assert after < 0.8 * before
    table = tuning.format_table(res)
    assert "*" in table and "ko=1" in table and "runs in" in table


def test_cli_tune_saves_a_preset(tmp_path, capsys, sim):
    files = write_pair(tmp_path, sim)
    out = tmp_path / "best.toml"
    rc = cli.main(["tune", *files, "--method", "hotpants", "--set", "backend=native",
                   "--set", "image_gain=2", "--budget", "1", "--save-preset", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    d = json.loads(cap.out)
    assert d["method"] == "hotpants" and len(d["trials"]) >= 1 and d["default"]["quality"]
    assert len(d["regions"]) == 5 and "as_user" in d  # scored on corners and centre
    p = presets.load_preset(out)
    assert p.method == "hotpants" and p.params.get("backend") == "native"
    assert p.params == presets.load_preset(out).params
    rc = cli.main(["tune", *files, "--method", "hotpants", "--set", "backend=native", "--budget", "0.5",
                   "--save-preset", str(out)])
    assert rc == 2 and "exists" in capsys.readouterr().err  # never overwritten silently
    rc = cli.main(["tune", *files, "--method", "hotpants", "--set", "backend=native", "--budget", "0.5",
                   "--regions", "0", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["regions"] is None  # the whole frame
    rc = cli.main(["tune", *files, "--method", "hotpants", "--budget", "-1"])
    assert rc == 2 and "budget" in capsys.readouterr().err


def test_no_worse_compares_every_score_with_its_ideal():
    ref = {"metrics": {"robust_std": 1.1, "peak_median": 1.5, "peak_p95": 5.0, "flux_left": 0.01,
                       "background_left": 0.1, "candidates_per_mpix": 3.0}}
    better = {"metrics": {**ref["metrics"], "peak_median": 0.7, "peak_p95": 2.0}}
    worse_bg = {"metrics": {**better["metrics"], "background_left": 0.4}}
    assert tuning.no_worse(better, ref) and tuning.no_worse(ref, ref)
    assert not tuning.no_worse(worse_bg, ref)
    assert not tuning.no_worse({}, ref)


def test_zogy_tiles_get_their_own_psfs():
    # more than one tile needs a spatially varying PSF model, or every tile gets the same PSF
    assert tuning._zogy_tiles({}, 6) == {"nx": 6, "ny": 6, "psf_options": {"order": 2}}
    assert tuning._zogy_tiles({"psf_options": {"order": 1, "sn": 9}}, 3)["psf_options"] == {"order": 1, "sn": 9}
    assert tuning._zogy_tiles({}, 1) == {"nx": 1, "ny": 1, "psf_options": None}
    assert 6 in [make({})["nx"] for make in dict(tuning.stages("zogy", {}))["nx/ny"]]


def test_zogy_finer_tiles_only_while_tiles_stay_large_enough():
    """8, 12, 16 tiles follow 6 x 6 as a growing series (skipped once one does not improve),
    and only while a tile keeps >= 64 px and >= 10 FWHM a side."""
    class Stars:
        def __init__(self, side, fwhm):
            self.source_free, self.image_fwhm, self.fwhm = np.zeros((side, side), bool), fwhm, 2.5

    def tiles(stars):
        makes = dict(tuning.stages("zogy", {}, stars))["nx/ny"]
        return [(m({})["nx"], getattr(m, "grows", None)) for m in makes]

    assert tiles(Stars(1024, 5.0)) == [(1, None), (3, None), (6, 6), (8, 8), (12, 12), (16, 16)]
    assert [n for n, _ in tiles(Stars(1024, 8.0))] == [1, 3, 6, 8, 12]  # 1024 / 16 < 80 px
    assert [n for n, _ in tiles(Stars(512, 4.0))] == [1, 3, 6, 8]  # 512 / 8 = 64 px
    assert [n for n, _ in tiles(Stars(512, 7.0))] == [1, 3, 6]  # 64 px < 70 (10 FWHM)


def test_tune_never_trades_one_score_for_another(monkeypatch, pair):
    """The lowest objective loses to a fair trial when it moves any score away from its ideal."""
    base = {"robust_std": 1.0, "peak_median": 1.6, "peak_p95": 4.0, "flux_left": 0.0,
            "background_left": 0.05, "candidates_per_mpix": 1.0}
    by_ko = {None: base,
             1: {**base, "peak_median": 0.9, "peak_p95": 2.4},  # better, nothing worse
             2: {**base, "peak_median": 0.7, "peak_p95": 2.0, "background_left": 0.45},  # trades
             3: {**base, "peak_median": 0.8, "peak_p95": 2.2, "robust_std": 1.6}}  # trades

    def fake(pair_, method, params, stars, use_obj, cancel, psfs=None, sample=None):
        q = {"metrics": dict(by_ko.get((params.get("extra") or {}).get("ko"), base))}
        return tuning.Trial(changes={}, params=dict(params), quality=q, objective=tuning.objective(q))

    monkeypatch.setattr(tuning, "_run_trial", fake)
    res = tuning.tune(pair, "hotpants", {}, budget=60.0, max_trials=4)
    assert min(res.trials, key=lambda t: t.objective).params["extra"]["ko"] == 2
    assert res.best.params["extra"]["ko"] == 1 and res.improved
    for t in res.trials:  # the chosen one is no worse on every score; the traders are not
        assert tuning.no_worse(t.quality, res.default.quality) == (t.params.get("extra", {}).get("ko") in (None, 0, 1))


def test_no_worse_uses_each_scores_noise_floor_and_refuses_lost_scores():
    ref = {"metrics": {"robust_std": 1.0, "peak_median": 0.9, "peak_p95": 2.4, "flux_left": 0.010,
                       "background_left": 0.05, "candidates_per_mpix": 2.0}}
    assert tuning.no_worse({"metrics": {**ref["metrics"], "flux_left": 0.0115}}, ref)
    assert not tuning.no_worse({"metrics": {**ref["metrics"], "flux_left": 0.015}}, ref)  # +50 %
    assert not tuning.no_worse({"metrics": {**ref["metrics"], "peak_p95": float("nan")}}, ref)
    assert tuning.no_worse({"metrics": {**ref["metrics"], "candidates_per_mpix": 2.9}}, ref)
    assert not tuning.no_worse({"metrics": {**ref["metrics"], "candidates_per_mpix": 3.5}}, ref)


def test_best_that_is_worse_as_the_user_runs_it_is_not_kept(monkeypatch, pair):
    base = {"robust_std": 1.0, "peak_median": 1.6, "peak_p95": 4.0, "flux_left": 0.0,
            "background_left": 0.05, "candidates_per_mpix": 1.0}

    def fake(pair_, method, params, stars, use_obj, cancel, psfs=None, sample=None):
        m = dict(base)
        if (params.get("extra") or {}).get("ko") == 1:  # better on the fit half, worse on its own
            m.update(peak_median=0.8, peak_p95=2.2) if use_obj else m.update(flux_left=0.03)
        q = {"metrics": m}
        return tuning.Trial(changes={}, params=dict(params), quality=q, objective=tuning.objective(q))

    monkeypatch.setattr(tuning, "_run_trial", fake)
    lines = []
    res = tuning.tune(pair, "hotpants", {}, budget=60.0, max_trials=3, verbose=lines.append)
    assert res.as_user is not None and res.best is res.default and not res.improved
    assert "base settings are kept" in lines[-1]


def test_sfft_kernel_sizes_stop_growing_when_they_stop_helping(monkeypatch, pair):
    base = {"robust_std": 1.0, "peak_median": 1.0, "peak_p95": 3.0, "flux_left": 0.0,
            "background_left": 0.05, "candidates_per_mpix": 1.0}
    tried = []

    def fake(pair_, method, params, stars, use_obj, cancel, psfs=None, sample=None):
        k = (params.get("kernel_shape") or (7, 7))[0]
        tried.append(k)
        m = {**base, "peak_p95": {9: 2.4, 11: 2.4, 13: 1.0}.get(k, 3.0)}  # 11 no better than 9
        q = {"metrics": m}
        return tuning.Trial(changes={}, params=dict(params), quality=q, objective=tuning.objective(q))

    orig = tuning.stages
    monkeypatch.setattr(tuning, "_run_trial", fake)
    monkeypatch.setattr(tuning, "stages", lambda method, b, stars=None: [
        s for s in orig(method, b, stars) if s[0] == "kernel_shape"])
    res = tuning.tune(pair, "sfft", {}, budget=60.0)
    assert 13 not in tried and tried[:3] == [7, 9, 11] and 5 in tried  # 13 skipped, 5 still tried
    assert res.best.params["kernel_shape"] == (9, 9)
