"""Scorecard (diffgui.engine.common.quality): theory values and flags."""

import numpy as np
import pytest

from diffgui.engine.common import quality as q
from diffgui.engine.errors import InputError
from star_fields import gauss_stars


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(5)
    shape = (512, 512)
    n = 500
    x, y = rng.uniform(10, 502, n), rng.uniform(10, 502, n)
    flux = 10 ** rng.uniform(3.3, 5.0, n)
    sigma_i, sigma_t = 10.0, 3.0
    tmpl_clean = 100.0 + gauss_stars(shape, x, y, flux, 2.5)
    sci_clean = 300.0 + gauss_stars(shape, x, y, 1.2 * flux, 3.5)
    noise_i = rng.normal(0, sigma_i, shape)
    template = tmpl_clean + rng.normal(0, sigma_t, shape)
    image = sci_clean + noise_i
    stars = q.prepare_stars(image, template)
    return dict(shape=shape, x=x, y=y, flux=flux, image=image, template=template, stars=stars,
                noise_i=noise_i, sigma=sigma_i, sci_clean=sci_clean)


def test_split_is_deterministic_and_balanced():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 1000, 2000), rng.uniform(0, 1000, 2000)
    a = q.split_by_position(x, y)
    assert np.array_equal(a, q.split_by_position(x.copy(), y.copy()))
    assert np.mean(a == q.split_by_position(x + 0.1, y - 0.2)) > 0.9  # same star, same half
    assert 0.45 < a.mean() < 0.55


def test_fit_and_score_stars_are_disjoint(field):
    st = field["stars"]
    fit = set(zip(np.rint(st.fit["x"]).astype(int), np.rint(st.fit["y"]).astype(int)))
    score = set(zip(np.rint(st.score["x"]).astype(int), np.rint(st.score["y"]).astype(int)))
    assert len(score) >= 40 and len(fit) >= 150
    assert not fit & score


def test_pure_noise_difference_scores_as_theory(field):
    sc = q.compute_scorecard(field["noise_i"], field["stars"], noise=field["sigma"],
                             image=field["image"])
    assert sc.normalised_by == "noise"
    assert sc.value("robust_std") == pytest.approx(1.0, abs=0.03)
    assert sc.value("peak_median") == pytest.approx(q.HALF_NORMAL_MEDIAN, abs=0.15)
    assert sc.value("peak_p95") < 2.6
    assert abs(sc.value("flux_left")) < 0.01
    assert sc.value("background_left") < 0.1
    assert sc.value("candidates_per_mpix") < 5
    assert sc.flagged() == []
    assert all(m.ideal for m in sc.metrics.values())


def test_scorr_and_estimated_normalisation(field):
    z = field["noise_i"] / field["sigma"]
    sc = q.compute_scorecard(field["noise_i"], field["stars"], scorr=z)
    assert sc.normalised_by == "scorr" and sc.value("robust_std") == pytest.approx(1, abs=0.03)
    sc = q.compute_scorecard(field["noise_i"] * 7, field["stars"])
    assert sc.normalised_by == "estimated" and sc.value("robust_std") == pytest.approx(1, abs=0.03)


def test_misfit_flux_scale_is_flagged(field):
    # the right kernel but a flux scale 10 % low: 10 % of each star is left
    diff = field["image"] - 300.0 - (field["sci_clean"] - 300.0) * 0.9
    sc = q.compute_scorecard(diff, field["stars"], noise=field["sigma"], image=field["image"],
                             kernel_sum=lambda x, y: 1.08)
    assert sc.value("flux_left") == pytest.approx(0.1, abs=0.02)
    assert "flux_left" in sc.flagged() and "peak_median" in sc.flagged()


def test_wrong_kernel_size_is_flagged(field):
    # template convolved to FWHM 3.0 instead of 3.5: dipole-free rings at every star
    model = 300.0 + gauss_stars(field["shape"], field["x"], field["y"], 1.2 * field["flux"], 3.0)
    diff = field["image"] - model
    sc = q.compute_scorecard(diff, field["stars"], noise=field["sigma"], image=field["image"])
    assert sc.value("peak_median") > 2.0 and sc.value("peak_p95") > 2.5
    assert {"peak_median", "peak_p95"} <= set(sc.flagged())
    assert np.nanmin(sc.tile_map) > 1.0


def test_kernel_sum_map_and_header(field):
    sc = q.compute_scorecard(field["noise_i"], field["stars"], noise=field["sigma"],
                             kernel_sum=lambda x, y: 1.2 + 0.3 * x / 512)
    assert sc.kernel_sum_map.shape == (4, 4)
    assert sc.value("kernel_sum_spread") == pytest.approx(0.225 / 1.35, rel=0.01) and "kernel_sum_spread" in sc.flagged()
    cards = dict((k, v) for k, v, _ in sc.header_cards())
    assert cards["QCNSTAR"] == sc.n_stars and "QCRSTD" in cards
    assert all(len(k) <= 8 for k in cards)


def test_too_few_stars_gives_a_warning_not_an_error(field):
    st = field["stars"]
    few = q.StarSets(st.fit, st.score[:2], st.source_free, st.fwhm, st.n_catalogue)
    sc = q.compute_scorecard(field["noise_i"], few, noise=field["sigma"])
    assert np.isnan(sc.value("peak_median")) and sc.warnings
    assert sc.metrics["peak_median"].text() == "n/a"


def test_bad_input():
    rng = np.random.default_rng(0)
    flat = rng.normal(0, 1, (64, 64))
    with pytest.raises(InputError, match="no stars"):
        q.prepare_stars(flat, flat)
    with pytest.raises(InputError, match="shape"):
        q.prepare_stars(flat, flat[:32])


def test_light_star_sets_for_batch_runs(field):
    """No science catalogue: the same stars are scored, only the template's sources are masked."""
    full = field["stars"]
    tobj = q.template_catalogue(field["template"])
    light = q.prepare_stars(field["image"], field["template"], template_objects=tobj, image_catalogue=False)
    assert light.image_fwhm is None and full.image_fwhm is not None
    np.testing.assert_array_equal(light.score["x"], full.score["x"])
    assert len(light.fit) == len(full.fit)
    assert (light.source_free >= full.source_free).all()  # masks a subset of what full masks
    assert light.source_free.mean() < full.source_free.mean() + 0.05  # same sky: nearly the same
    d = field["noise_i"]
    a = q.compute_scorecard(d, full, noise=field["sigma"]).to_dict()["metrics"]
    b = q.compute_scorecard(d, light, noise=field["sigma"]).to_dict()["metrics"]
    assert abs(a["robust_std"] - b["robust_std"]) < 0.02 and a["peak_median"] == b["peak_median"]


def test_template_catalogue_is_detected_once_per_content(field, monkeypatch):
    from diffgui.app import scoring

    calls = []
    real = q.template_catalogue
    monkeypatch.setattr(q, "template_catalogue", lambda *a, **k: calls.append(1) or real(*a, **k))
    scoring._TEMPLATES.clear()
    first = scoring.template_objects(field["template"])
    again = scoring.template_objects(field["template"].copy())  # another pair, same template
    assert again is first and len(calls) == 1
    scoring.template_objects(field["template"] + 1.0)
    assert len(calls) == 2
