"""Tests of diffgui.engine.simulation: the truth must be what is rendered."""

import math

import numpy as np
import pytest

from diffgui.engine.errors import InputError
from diffgui.engine.simulation import (
    FWHM_TO_SIGMA,
    make_demo_pair,
    psf_stamp,
    simulate_pair,
)


def _moments_sigma(stamp):
    """Per-axis sigma of a stamp from second moments, pixel variance removed."""
    h, w = stamp.shape
    yy, xx = np.mgrid[0:h, 0:w]
    s = stamp.sum()
    cx, cy = (stamp * xx).sum() / s, (stamp * yy).sum() / s
    vx = (stamp * (xx - cx) ** 2).sum() / s - 1.0 / 12
    vy = (stamp * (yy - cy) ** 2).sum() / s - 1.0 / 12
    return math.sqrt(vx), math.sqrt(vy), cx, cy


def _centroid(img, x, y, r):
    ix, iy = int(round(x)), int(round(y))
    cut = img[iy - r:iy + r + 1, ix - r:ix + r + 1]
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    s = cut.sum()
    return ix + (cut * xx).sum() / s, iy + (cut * yy).sum() / s


@pytest.fixture(scope="module")
def pair():
    return simulate_pair(shape=(256, 256), n_stars=120, star_flux_range=(300, 3e5),
                         transients=6, seed=3)


def test_deterministic_by_seed():
    a = simulate_pair(shape=(96, 96), n_stars=20, transients=3, seed=11)
    b = simulate_pair(shape=(96, 96), n_stars=20, transients=3, seed=11)
    c = simulate_pair(shape=(96, 96), n_stars=20, transients=3, seed=12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.template, b.template)
    assert np.array_equal(a.stars["x"], b.stars["x"])
    assert np.array_equal(a.transients["flux"], b.transients["flux"])
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.stars["x"], c.stars["x"])


def test_noise_streams_independent():
    # Identical image and template settings: only the noise streams differ.
    kw = dict(image_fwhm=3.0, template_fwhm=3.0, flux_scale=1.0, image_sky=800, template_sky=800,
              image_gain=2, template_gain=2, image_readnoise=5, template_readnoise=5)
    p = simulate_pair(shape=(256, 256), n_stars=50, seed=5, **kw)
    zi = ((p.image - p.image_model) / p.image_noise).ravel()
    zt = ((p.template - p.template_model) / p.template_noise).ravel()
    assert np.array_equal(p.image_model, p.template_model)
    assert abs(np.corrcoef(zi, zt)[0, 1]) < 0.015  # 1/256 = 0.004 expected scatter


def test_noise_map_matches_scatter(pair):
    for img, model, noise in ((pair.image, pair.image_model, pair.image_noise),
                              (pair.template, pair.template_model, pair.template_noise)):
        z = (img - model) / noise
        assert abs(np.std(z) - 1.0) < 0.02
        assert abs(np.mean(z)) < 0.02
        # Also where source Poisson noise dominates the sky.
        bright = (model - model.min()) > 10 * noise.min()
        assert bright.sum() > 500
        assert abs(np.std(z[bright]) - 1.0) < 0.06


def test_noise_map_formula(pair):
    t = pair.truth
    expect = np.sqrt(pair.image_model / t["image_gain"] + (t["image_readnoise"] / t["image_gain"]) ** 2)
    assert np.allclose(pair.image_noise, expect)
    sky_sigma = math.sqrt(500 / 10 + 0.3 ** 2)
    assert np.min(pair.template_noise) == pytest.approx(sky_sigma, rel=1e-6)


def _isolated(stars, min_dist, shape, margin):
    x, y = np.asarray(stars["x"]), np.asarray(stars["y"])
    d2 = (x[:, None] - x[None]) ** 2 + (y[:, None] - y[None]) ** 2
    np.fill_diagonal(d2, np.inf)
    h, w = shape
    return ((d2.min(axis=1) > min_dist ** 2) & (x > margin) & (x < w - 1 - margin)
            & (y > margin) & (y < h - 1 - margin))


def test_star_fluxes_by_aperture():
    pair = simulate_pair(shape=(400, 400), n_stars=30, star_flux_range=(1000, 3e5), seed=13)
    stars = pair.stars
    r = pair.truth["image_psf_radius"]
    iso = _isolated(stars, 2 * r + 2, pair.image.shape, r + 1) & ~np.asarray(stars["variable"])
    assert iso.sum() >= 10
    dev = []
    for row in stars[iso]:
        ix, iy = int(round(row["x"])), int(round(row["y"]))
        sl = np.s_[iy - r:iy + r + 1, ix - r:ix + r + 1]
        model_sum = (pair.image_model - pair.image_background)[sl].sum()
        assert model_sum == pytest.approx(row["image_flux"], rel=1e-9)
        noisy_sum = (pair.image - pair.image_background)[sl].sum()
        sigma = math.sqrt((pair.image_noise[sl] ** 2).sum())
        dev.append((noisy_sum - row["image_flux"]) / sigma)
        tx, ty = int(round(row["template_x"])), int(round(row["template_y"]))
        rt = pair.truth["template_psf_radius"]
        tsum = (pair.template_model - pair.template_background)[ty - rt:ty + rt + 1, tx - rt:tx + rt + 1].sum()
        assert tsum == pytest.approx(row["template_flux"], rel=1e-9)
    dev = np.array(dev)
    assert np.all(np.abs(dev) < 5)
    assert 0.5 < np.std(dev) < 1.6


@pytest.mark.parametrize("fwhm", [2.5, 3.5, 6.0])
def test_gaussian_stamp_sum_and_fwhm(fwhm):
    for dx, dy in ((0.0, 0.0), (0.37, -0.21)):
        st = psf_stamp(fwhm, 2 * int(math.ceil(5 * fwhm)) + 1, dx=dx, dy=dy)
        assert st.sum() == pytest.approx(1.0, abs=1e-12)
        sx, sy, cx, cy = _moments_sigma(st)
        c = st.shape[0] // 2
        assert cx == pytest.approx(c + dx, abs=1e-6) and cy == pytest.approx(c + dy, abs=1e-6)
        assert sx / FWHM_TO_SIGMA == pytest.approx(fwhm, rel=0.02)
        assert sy / FWHM_TO_SIGMA == pytest.approx(fwhm, rel=0.02)


def test_moffat_stamp_sum_and_fwhm():
    fwhm = 8.0
    st = psf_stamp(fwhm, 81, psf="moffat", beta=3.0)
    assert st.sum() == pytest.approx(1.0, abs=1e-12)
    row = st[40]
    half = row.max() / 2
    # Linear interpolation of the half-maximum crossing on both sides of the peak.
    right = next(i for i in range(40, 81) if row[i] < half)
    xr = right - 1 + (row[right - 1] - half) / (row[right - 1] - row[right])
    assert 2 * (xr - 40) == pytest.approx(fwhm, rel=0.02)
    # Pixel integration: a small Moffat stamp's peak is below the sampled profile.
    small = psf_stamp(2.0, 21, psf="moffat", beta=3.0)
    assert small.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.unravel_index(small.argmax(), small.shape) == (10, 10)


def test_psf_stamp_errors():
    with pytest.raises(InputError, match="odd"):
        psf_stamp(3.0, 10)
    with pytest.raises(InputError, match="psf"):
        psf_stamp(3.0, 11, psf="airy")
    with pytest.raises(InputError, match="beta"):
        psf_stamp(3.0, 11, psf="moffat", beta=0.8)


def test_rendered_star_is_flux_times_psf():
    p = simulate_pair(shape=(64, 64), n_stars=0, transients=[{"x": 30.3, "y": 31.8, "flux": 5000.0}],
                      psf="moffat", seed=1)
    r = p.truth["image_psf_radius"]
    src = p.image_model - p.image_background
    stamp = src[32 - r:32 + r + 1, 30 - r:30 + r + 1]
    assert np.allclose(stamp, 5000.0 * p.image_psf(30.3, 31.8), atol=1e-9)
    assert src.sum() == pytest.approx(5000.0, rel=1e-9)
    small = p.image_psf(30.3, 31.8, size=7)
    assert small.shape == (7, 7) and small.sum() == pytest.approx(1.0)
    big = p.image_psf(30, 31, size=2 * r + 5)
    assert big.sum() == pytest.approx(1.0) and big[0].sum() == 0.0


def test_fwhm_gradient_honoured():
    # Stars rendered at two corners through 'fade' transients (hosts exist in both images).
    pos = [(20.0, 20.0), (107.0, 107.0)]
    p = simulate_pair(shape=(128, 128), n_stars=0, image_fwhm=3.0, template_fwhm=2.5,
                      image_fwhm_gradient=0.4, template_fwhm_gradient=(0.0, -0.3), seed=2,
                      transients=[{"x": x, "y": y, "flux": 1000.0, "kind": "fade", "host_flux": 1e4}
                                  for x, y in pos])
    assert p.fwhm_at("image", 0, 0) == pytest.approx(3.0 * 0.8)
    assert p.fwhm_at("image", 127, 127) == pytest.approx(3.0 * 1.2)
    assert p.fwhm_at("template", 127, 0) == pytest.approx(2.5 * 1.15)
    for which, model, bg in (("image", p.image_model, p.image_background),
                             ("template", p.template_model, p.template_background)):
        for x, y in pos:
            cut = (model - bg)[int(y) - 15:int(y) + 16, int(x) - 15:int(x) + 16]
            sx, sy, _, _ = _moments_sigma(cut)
            expect = p.fwhm_at(which, x, y)
            assert sx / FWHM_TO_SIGMA == pytest.approx(expect, rel=0.02)
            assert sy / FWHM_TO_SIGMA == pytest.approx(expect, rel=0.02)
            st = p.image_psf(x, y) if which == "image" else p.template_psf(x, y)
            assert _moments_sigma(st)[0] / FWHM_TO_SIGMA == pytest.approx(expect, rel=0.02)


def test_flux_scale_gradient_honoured():
    pos = [(20.0, 20.0), (107.0, 20.0), (20.0, 107.0), (107.0, 107.0)]
    p = simulate_pair(shape=(128, 128), n_stars=0, flux_scale=1.2, flux_scale_gradient=(0.2, -0.1),
                      seed=4, transients=[{"x": x, "y": y, "flux": 1.0, "kind": "brighten",
                                           "host_flux": 2e4} for x, y in pos])
    assert p.flux_scale_at(63.5, 63.5) == pytest.approx(1.2)
    assert p.flux_scale_at(127, 0) == pytest.approx(1.2 * (1 + 0.1 + 0.05))
    assert p.truth["stdpipe_flux_ratio"] == pytest.approx(1 / 1.2)
    for x, y in pos:
        sl = np.s_[int(y) - 15:int(y) + 16, int(x) - 15:int(x) + 16]
        fi = (p.image_model - p.image_background)[sl].sum() - 1.0  # minus the transient
        ft = (p.template_model - p.template_background)[sl].sum()
        assert fi / ft == pytest.approx(p.flux_scale_at(x, y), rel=1e-6)


def test_template_shift_honoured():
    p = simulate_pair(shape=(96, 96), n_stars=0, template_shift=(0.6, -0.35), seed=6,
                      transients=[{"x": 47.2, "y": 48.7, "flux": 1.0, "kind": "brighten",
                                   "host_flux": 2e5}])
    xi, yi = _centroid(p.image - p.image_background, 47.2, 48.7, 9)
    xt, yt = _centroid(p.template - p.template_background, 47.2 + 0.6, 48.7 - 0.35, 9)
    assert xi == pytest.approx(47.2, abs=0.02) and yi == pytest.approx(48.7, abs=0.02)
    assert xt - xi == pytest.approx(0.6, abs=0.03) and yt - yi == pytest.approx(-0.35, abs=0.03)
    star = p.stars[0]
    assert star["template_x"] - star["x"] == pytest.approx(0.6)


def test_saturation_clips_and_flags():
    p = simulate_pair(shape=(128, 128), n_stars=60, star_flux_range=(100, 1e6), saturation=20000, seed=7)
    assert p.image.max() <= 20000 and p.template.max() <= 20000
    assert p.image_mask.any() and p.template_mask.any()
    assert np.array_equal(p.image_mask, p.image >= 20000)
    peak_model = np.array([p.image_model[int(round(y)), int(round(x))] for x, y in zip(p.stars["x"], p.stars["y"])])
    sat = np.asarray(p.stars["saturated"])
    assert sat.any() and not sat.all()
    assert np.all(sat[peak_model > 22000])  # clearly above the level: always flagged
    assert not np.any(sat[peak_model < 15000])
    assert p.truth["saturation"] == (20000.0, 20000.0)


@pytest.mark.parametrize("n_stars", [0, 120])
def test_transient_kinds_and_signs(pair, n_stars):
    if n_stars == 0:
        pair = simulate_pair(shape=(256, 256), n_stars=0, transients=6, seed=3)
    tr = pair.transients
    assert sorted(set(tr["kind"])) == ["brighten", "fade", "new"]
    # Ideal difference of the noiseless models, sky removed.
    h, w = pair.image.shape
    s = pair.flux_scale_at(np.arange(w)[None, :], np.arange(h)[:, None])
    d = (pair.image_model - pair.image_background) - s * (pair.template_model - pair.template_background)
    r = pair.truth["image_psf_radius"] // 2  # 2.5 FWHM: encloses all but 1e-8
    for row in tr:
        ix, iy = int(round(row["x"])), int(round(row["y"]))
        ap = d[iy - r:iy + r + 1, ix - r:ix + r + 1].sum()
        # Template PSF is narrower: same flux, different shape; sums agree.  Faint
        # stars allowed near a spot cancel in D but for the part cut by the box.
        assert ap == pytest.approx(row["flux"], rel=1e-6 if n_stars == 0 else 1e-2)
        assert (row["flux"] < 0) == (row["kind"] == "fade")
        if row["kind"] == "new":
            assert row["star"] == -1 and row["host_flux"] == 0
        else:
            star = pair.stars[row["star"]]
            assert star["variable"] and star["transient"] == row["id"]
            assert star["image_flux"] == pytest.approx(star["flux_scale"] * star["template_flux"] + row["flux"])
    snr = np.asarray(tr["ideal_snr"])
    assert snr.min() == pytest.approx(5.0, rel=0.05) and snr.max() > 60


def test_explicit_transients_and_errors():
    p = simulate_pair(shape=(96, 96), n_stars=0, seed=1, transients=[
        {"x": 30, "y": 30, "flux": 800, "kind": "fade"},
        {"x": 60, "y": 60, "flux": -500, "kind": "brighten", "host_flux": 100}])
    assert list(p.transients["flux"]) == [-800, 500]
    # A vanishing star: nothing left of it in the science image.
    r = p.truth["image_psf_radius"]
    sl = np.s_[30 - r:31 + r, 30 - r:31 + r]
    assert np.abs(p.image_model - p.image_background)[sl].max() < 1e-9
    with pytest.raises(InputError, match="host"):
        simulate_pair(shape=(64, 64), n_stars=0, transients=[
            {"x": 30, "y": 30, "flux": 800, "kind": "fade", "host_flux": 100}])
    with pytest.raises(InputError, match="kind"):
        simulate_pair(shape=(64, 64), transients=[{"x": 1, "y": 1, "flux": 1, "kind": "nova"}])
    with pytest.raises(InputError, match="psf"):
        simulate_pair(shape=(64, 64), psf="airy")


def test_ideal_snr_formula():
    p = simulate_pair(shape=(96, 96), n_stars=0, seed=9, transients=[{"x": 48.3, "y": 47.6, "flux": 2000.0}])
    t = p.truth
    var_b = (t["image_sky"] / t["image_gain"] + (t["image_readnoise"] / t["image_gain"]) ** 2
             + t["flux_scale"] ** 2 * (t["template_sky"] / t["template_gain"]
                                       + (t["template_readnoise"] / t["template_gain"]) ** 2))
    psf = p.image_psf(48.3, 47.6)
    expect = math.sqrt(np.sum(2000.0 ** 2 * psf ** 2 / (var_b + 2000.0 * psf / t["image_gain"])))
    assert p.transients["ideal_snr"][0] == pytest.approx(expect, rel=1e-9)
    assert p.ideal_snr(2000.0, 48.3, 47.6) == pytest.approx(expect, rel=1e-9)
    no_src = 2000.0 * math.sqrt(np.sum(psf ** 2) / var_b)
    assert p.ideal_snr(2000.0, 48.3, 47.6, include_source=False) == pytest.approx(no_src, rel=1e-9)


def test_star_counts_power_law():
    p = simulate_pair(shape=(256, 256), n_stars=4000, star_flux_range=(100, 1e4), flux_slope=1.5, seed=8)
    f = np.asarray(p.stars["template_flux"])
    assert f.min() >= 100 and f.max() <= 1e4
    r = (1e4 / 100) ** -1.5
    expect = ((2.0 ** -1.5) - r) / (1 - r)  # N(>2 Fmin) / N
    assert np.mean(f > 200) == pytest.approx(expect, abs=0.03)
    default = simulate_pair(shape=(128, 128), seed=8)
    assert len(default.stars) == round(1500 * 128 * 128 / 1024 ** 2)


def test_sky_gradient_and_backgrounds():
    p = simulate_pair(shape=(64, 128), n_stars=0, sky_gradient=((40, 20), (0, 10)), seed=2)
    bg = p.image_background
    assert bg[0, -1] - bg[0, 0] == pytest.approx(40)
    assert bg[-1, 0] - bg[0, 0] == pytest.approx(20)
    assert bg.mean() == pytest.approx(1000)
    assert p.template_background[-1, 0] - p.template_background[0, 0] == pytest.approx(10)
    with pytest.raises(InputError, match="sky_gradient"):
        simulate_pair(shape=(64, 64), sky_gradient=(1, 2, 3))


def test_demo_pair():
    p = make_demo_pair(seed=2)
    assert p.image.shape == (512, 512) and p.image.dtype == np.float64
    assert len(p.transients) == 10
    assert set(p.transients["kind"]) == {"new", "brighten", "fade"}
    assert p.truth["psf"] == "moffat"
    assert np.all(np.isfinite(p.image)) and np.all(p.image_noise > 0)
