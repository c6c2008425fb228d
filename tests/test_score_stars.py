"""The scorecard's own catalogue (binned detection) and the cheap scoring paths (issue 13)."""

import numpy as np
import pytest

from diffgui.engine.common import quality as q
from diffgui.engine.common import score_stars as ss
from diffgui.engine.errors import InputError
from star_fields import gauss_stars


@pytest.fixture(scope="module")
def sky():
    rng = np.random.default_rng(21)
    shape = (400, 410)
    n = 150
    x, y = rng.uniform(15, 395, n), rng.uniform(15, 385, n)
    flux = 10 ** rng.uniform(3.5, 5.0, n)
    image = (50.0 + gauss_stars(shape, x, y, flux, 3.2) + rng.normal(0, 4.0, shape)).astype(np.float32)
    return dict(x=x, y=y, flux=flux, image=image, sigma=4.0)


def _match(cat, x, y):
    from scipy.spatial import cKDTree

    d, j = cKDTree(np.column_stack([cat["x"], cat["y"]])).query(np.column_stack([x, y]))
    return d, j


def test_catalogue_finds_stars_with_true_positions_fluxes_and_fwhm(sky):
    cat = ss.quick_catalogue(sky["image"])
    assert list(cat["flux"]) == sorted(cat["flux"], reverse=True)
    d, j = _match(cat, sky["x"], sky["y"])
    isolated = np.array([np.sort(np.hypot(sky["x"] - xi, sky["y"] - yi))[1] > 12
                         for xi, yi in zip(sky["x"], sky["y"])])
    assert np.mean(d[isolated] < 0.5) > 0.95  # every isolated star found, to < 0.5 px
    assert np.median(d[isolated]) < 0.2
    # aperture of 1.5 FWHM holds 1 - 2^-(1.5^2 * 4) = 99.8 % of a Gaussian's flux
    ratio = np.asarray(cat["flux"])[j[isolated]] / sky["flux"][isolated]
    assert np.median(ratio) == pytest.approx(0.998, abs=0.02)
    bright = isolated & (sky["flux"] > 2e4)
    assert np.median(np.asarray(cat["fwhm"])[j[bright]]) == pytest.approx(3.2, rel=0.08)
    sn = np.asarray(cat["flux"] / cat["fluxerr"])[j[bright]]
    expected = sky["flux"][bright] / (sky["sigma"] * np.sqrt(np.pi) * 1.5 * 3.2)  # sky-limited
    assert np.median(sn / expected) == pytest.approx(1.0, abs=0.15)


def test_catalogue_has_no_false_detections_on_pure_noise():
    rng = np.random.default_rng(3)
    noise = rng.normal(100.0, 5.0, (512, 512))
    assert len(ss.quick_catalogue(noise, thresh=3.0)) == 0  # as detect_objects at 3 sigma


def test_catalogue_masks_flags_saturation_and_odd_shapes(sky):
    img = sky["image"][:-1, :-3].copy()  # odd shape (399, 407)
    img[100:110, 100:110] = np.nan
    cat = ss.quick_catalogue(img, saturation=float(np.max(sky["image"])) * 0.5)
    assert len(cat) > 50 and np.all(np.isfinite(cat["x"]))
    assert np.any(cat["flags"] & 0x4)  # the brightest stars are saturated
    near = (np.abs(cat["x"] - 105) < 8) & (np.abs(cat["y"] - 105) < 8)
    assert np.all(cat["flags"][near] & 0x100)
    with pytest.raises(InputError, match="too small"):
        ss.quick_catalogue(np.zeros((5, 40)))


def test_close_blends_are_not_scored():
    rng = np.random.default_rng(4)
    shape = (300, 300)
    x = np.array([60.0, 150.0, 153.5, 240.0] + list(rng.uniform(30, 270, 60)))
    y = np.array([60.0, 150.0, 150.5, 240.0] + list(rng.uniform(30, 270, 60)))
    flux = np.array([3e4, 3e4, 3e4, 3e4] + list(10 ** rng.uniform(3.5, 4.5, 60)))
    tmpl = 20.0 + gauss_stars(shape, x, y, flux, 2.8) + rng.normal(0, 2.0, shape)
    st = ss.prepare_stars(tmpl, tmpl)
    d = np.hypot(np.asarray(st.score["x"]) - 151.7, np.asarray(st.score["y"]) - 150.2)
    assert not np.any(d < 6)  # the pair 3.5 px apart is one broad object: not a star to score


def test_disk_mask_and_binned_background_are_exact():
    rng = np.random.default_rng(1)
    x, y, r = rng.uniform(-5, 70, 50), rng.uniform(-5, 70, 50), rng.uniform(0.5, 9, 50)
    yy, xx = np.mgrid[:64, :70]
    ref = np.zeros((64, 70), bool)
    for xi, yi, ri in zip(x, y, r):
        rc = int(np.ceil(ri))
        ref |= (xx - int(round(xi))) ** 2 + (yy - int(round(yi))) ** 2 <= rc * rc
    assert np.array_equal(ss._disk_mask((64, 70), x, y, r), ref)
    for shape in ((10, 12), (11, 13)):
        a = rng.normal(size=shape).astype(np.float32)
        m = rng.normal(size=(shape[0] // 2, shape[1] // 2)).astype(np.float32)
        up = np.repeat(np.repeat(m, 2, 0), 2, 1)
        up = np.pad(up, ((0, shape[0] - up.shape[0]), (0, shape[1] - up.shape[1])), mode="edge")
        assert np.array_equal(ss._minus_binned(a, m), a - up)


def test_subsampled_statistics_and_candidates_match_the_full_frame(sky):
    rng = np.random.default_rng(8)
    shape = (1100, 1000)  # sample_step 2: robust statistics on a quarter of the pixels
    assert q.sample_step(shape) == 2 and q.sample_step((512, 512)) == 1
    z = rng.normal(0, 1, shape)
    blobs = [(100, 200), (500, 700), (900, 120)]
    for by, bx in blobs:  # three 3 x 3 groups at 8 sigma, and a 2-pixel group (not counted)
        z[by - 1:by + 2, bx - 1:bx + 2] = 8.0
    z[300, 300:302] = -9.0
    stars = q.StarSets(fit=None, score=sky_score(), source_free=np.ones(shape, bool), fwhm=3.0,
                       n_catalogue=0)
    sc = q.compute_scorecard(z * 3.0, stars, noise=3.0)
    full = 1.482602218505602 * np.median(np.abs(z - np.median(z)))
    assert sc.value("robust_std") == pytest.approx(full, rel=0.01)  # sampling error ~0.2 %
    assert sc.value("candidates_per_mpix") == pytest.approx(len(blobs) / 1.1, rel=1e-6)
    sc2 = q.compute_scorecard(z, stars, scorr=z)
    assert sc2.value("candidates_per_mpix") == pytest.approx(len(blobs) / 1.1, rel=1e-6)


def sky_score():
    from astropy.table import Table

    return Table({"x": np.zeros(0), "y": np.zeros(0), "px": np.zeros(0, int), "py": np.zeros(0, int)})
