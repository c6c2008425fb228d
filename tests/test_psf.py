"""PSF model dicts, stamps, PSFEx files and estimation from stars (diffgui.engine.psf)."""

import numpy as np
import pytest
from astropy.io import fits

from diffgui.engine import psf as P
from diffgui.engine.errors import FitError, InputError
from diffgui.engine.simulation import psf_stamp, simulate_pair


def _centroid(a):
    yy, xx = np.mgrid[:a.shape[0], :a.shape[1]]
    return (a * xx).sum() / a.sum() - a.shape[1] // 2, (a * yy).sum() / a.sum() - a.shape[0] // 2


def _gauss(size, sigma, cx=0.0, cy=0.0):
    yy, xx = np.mgrid[:size, :size] - size // 2
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


# ---- model dict -----------------------------------------------------------------------

def test_poly_terms_follow_psfex_order():
    t = P.poly_terms(2.0, 3.0, 2)
    # 1, u, u^2, v, u v, v^2
    assert np.allclose(t, [1, 2, 4, 3, 6, 9])
    assert [P.ncoeffs_for_degree(d) for d in range(4)] == [1, 3, 6, 10]


def test_plain_array_is_a_constant_psf_and_is_not_changed():
    g = _gauss(15, 1.5)
    orig = g.copy()
    d = P.as_psf(g)
    assert d["degree"] == 0 and d["ncoeffs"] == 1 and d["sampling"] == 1.0
    assert d["fwhm"] == pytest.approx(2.3548 * 1.5, rel=0.02)
    st = P.get_psf_stamp(d, 100.0, 50.0)
    assert np.allclose(st, g)  # integer position: the model itself
    assert np.array_equal(g, orig)


def test_even_sized_array_is_resampled_to_an_odd_centred_stamp():
    g = _gauss(17, 1.6, cx=-0.5, cy=-0.5)[:16, :16]  # centre between pixels 7 and 8
    st = P.get_psf_stamp(g, 0, 0)
    assert st.shape[0] % 2 == 1 and st.sum() == pytest.approx(1.0)
    cx, cy = _centroid(st)
    assert abs(cx) < 0.02 and abs(cy) < 0.02


@pytest.mark.parametrize("dx,dy", [(0.3, -0.2), (-0.5, 0.45), (0.1, 0.0)])
def test_subpixel_shift_moves_the_centroid(dx, dy):
    d = P.as_psf(psf_stamp(3.0, 25))
    st = P.get_psf_stamp(d, 0, 0, dx, dy)
    cx, cy = _centroid(st)
    assert cx == pytest.approx(dx, abs=0.01) and cy == pytest.approx(dy, abs=0.01)
    # the default shift is the fractional offset from the nearest pixel
    st2 = P.get_psf_stamp(d, 10 + dx, 20 + dy)
    assert np.allclose(st, st2)
    # and it matches the exactly pixel-integrated truth
    assert np.abs(st - psf_stamp(3.0, 25, dx=dx, dy=dy)).sum() < 0.01


def test_integer_oversampled_dict_uses_block_sums_like_stdpipe():
    # stdpipe's simulated PSFs: intrinsic profile on a 2x finer grid, size divisible by 2
    n, os_ = 21, 2
    fine = _gauss(n * os_, 1.5 * os_, cx=-0.5, cy=-0.5)    # (42, 42), centre at 20.5
    d = P.as_psf({"data": fine[None], "sampling": 0.5, "degree": 0})
    assert P.stamp_size(d) == (n, n)
    st = P.get_psf_stamp(d, 0, 0, 0, 0)
    cx, cy = _centroid(st)
    assert abs(cx) < 0.05 and abs(cy) < 0.05 and st.sum() == pytest.approx(1.0)
    st = P.get_psf_stamp(d, 0, 0, 0.25, 0)
    assert _centroid(st)[0] == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("bad,match", [
    ({"data": np.ones((3, 5, 5)), "degree": 0}, "degree 0 needs 1"),
    ({"data": np.ones((1, 5, 5)), "width": 7}, "inconsistent"),
    ({"data": np.ones((1, 5, 5)), "sampling": 0}, "sampling"),
    ({"data": np.full((1, 5, 5), np.nan)}, "non-finite"),
    ({"data": np.zeros((1, 5, 5))}, "no positive flux"),
    ({"width": 5}, "lacks"),
    ({"data": np.ones((1, 5, 5)), "sx": 0.0}, "sx"),
])
def test_inconsistent_dicts_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        P.as_psf(bad)
    with pytest.raises(InputError):
        P.as_psf(42)


def test_polynomial_evaluation_and_stamp_at_position():
    base = _gauss(15, 1.5)
    grad = _gauss(15, 2.0) - base  # broader towards +u
    d = P.as_psf({"data": np.array([base, grad, np.zeros_like(base)]), "degree": 1,
                  "x0": 100.0, "sx": 200.0, "y0": 50.0, "sy": 100.0})
    m = P.evaluate_model(d, 200.0, 50.0)          # u = 0.5, v = 0
    assert np.allclose(m, base + 0.5 * grad)
    f_left = P.measure_fwhm(P.get_psf_stamp(d, 0.0, 50.0))
    f_right = P.measure_fwhm(P.get_psf_stamp(d, 200.0, 50.0))
    assert f_right > f_left


def _write_psfex_like(path, data, deg, polzero, polscal, samp, fwhm):
    """A file laid out the way PSFEx writes .psf files."""
    nc, h, w = data.shape
    col = fits.Column(name="PSF_MASK", format=f"{data.size}E", dim=f"({w}, {h}, {nc})",
                      array=data[None].astype(np.float32))
    hdu = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
    hd = hdu.header
    hd["POLNAXIS"] = 2 if deg else 0
    if deg:
        hd["POLZERO1"], hd["POLSCAL1"], hd["POLZERO2"], hd["POLSCAL2"] = polzero[0], polscal[0], polzero[1], polscal[1]
        hd["POLDEG1"] = deg
    hd["PSF_FWHM"], hd["PSF_SAMP"] = fwhm, samp
    hd["PSFNAXIS"], hd["PSFAXIS1"], hd["PSFAXIS2"], hd["PSFAXIS3"] = 3, w, h, nc
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)


def test_load_psfex_file_converts_polzero_to_0_based(tmp_path):
    base = _gauss(25, 3.0)          # oversampled model, sampling 0.5
    grad = _gauss(25, 3.6) - base
    data = np.array([base, grad, np.zeros_like(base)])
    path = tmp_path / "model.psf"
    _write_psfex_like(path, data, 1, (513.0, 257.0), (1000.0, 500.0), 0.5, 3.4)
    d = P.load_psfex(path)
    assert d["degree"] == 1 and d["ncoeffs"] == 3 and d["sampling"] == 0.5
    assert d["x0"] == 512.0 and d["y0"] == 256.0 and d["fwhm"] == 3.4
    assert np.allclose(d["data"], data, atol=1e-7)
    assert np.allclose(P.evaluate_model(d, 1012.0, 256.0), base + 0.5 * grad, atol=1e-7)
    # same as passing the file name to as_psf; image stamp is odd and centred
    st = P.get_psf_stamp(str(path), 512, 256)
    assert st.shape == (13, 13)
    assert np.abs(_centroid(st)).max() < 0.01
    with pytest.raises(InputError, match="does not exist"):
        P.load_psfex(tmp_path / "missing.psf")


def test_write_psfex_round_trip(tmp_path):
    d = P.as_psf({"data": np.array([_gauss(21, 2.0), 0.01 * _gauss(21, 2.5), np.zeros((21, 21))]),
                  "degree": 1, "x0": 99.0, "sx": 200.0, "y0": 49.0, "sy": 100.0, "sampling": 0.5})
    path = tmp_path / "ours.psf"
    P.write_psfex(d, path)
    with fits.open(path) as h:
        assert h["PSF_DATA"].header["POLZERO1"] == 100.0  # 1-based on disk
    back = P.load_psfex(path)
    for k in ("width", "height", "ncoeffs", "degree", "sampling", "x0", "y0", "sx", "sy"):
        assert back[k] == pytest.approx(d[k])
    assert np.allclose(back["data"], d["data"], atol=1e-6)
    with pytest.raises(InputError, match="exists"):
        P.write_psfex(d, path)


# ---- estimation -----------------------------------------------------------------------

def _check_against_truth(psf, truth_fn, positions, sad_max=0.03, fwhm_tol=0.03):
    worst_sad, worst_fwhm = 0.0, 0.0
    for x, y in positions:
        st = P.get_psf_stamp(psf, x, y)
        tr = truth_fn(x, y, st.shape[0])
        worst_sad = max(worst_sad, np.abs(st - tr).sum())
        f_est = P.measure_fwhm(P.get_psf_stamp(psf, x, y, 0, 0))
        f_true = P.measure_fwhm(truth_fn(round(x), round(y), st.shape[0]))
        worst_fwhm = max(worst_fwhm, abs(f_est / f_true - 1))
    assert worst_sad < sad_max, worst_sad
    assert worst_fwhm < fwhm_tol, worst_fwhm
    return worst_sad, worst_fwhm


POSITIONS = [(256, 256), (60.3, 70.6), (450.5, 440.2), (60, 450), (450, 60), (180.7, 330.2)]


def test_estimate_constant_gaussian_psf_from_stars():
    sp = simulate_pair(shape=(512, 512), image_fwhm=3.5, seed=3)
    psf, obj = P.estimate_psf(sp.image, err=sp.image_noise, get_obj=True)
    assert len(obj) > 100 and psf["nstars"] >= 30
    assert psf["width"] % 2 == 1 and psf["data"].shape == (1, psf["height"], psf["width"])
    _check_against_truth(psf, sp.image_psf, POSITIONS)


def test_estimate_field_varying_psf_with_degree_2():
    # FWHM 2.98 px in one corner, 4.03 px in the opposite one (30 % of the 3.5 px centre)
    sp = simulate_pair(shape=(512, 512), image_fwhm=3.5, image_fwhm_gradient=0.3, n_stars=400,
                       star_flux_range=(1e3, 2e5), image_sky=100, seed=5)
    change = (sp.fwhm_at("image", 511, 511) - sp.fwhm_at("image", 0, 0)) / sp.fwhm_at("image", 255.5, 255.5)
    assert change == pytest.approx(0.3)
    psf = P.estimate_psf(sp.image, err=sp.image_noise, order=2)
    assert psf["degree"] == 2 and psf["ncoeffs"] == 6
    corners = [(45, 45), (466, 466), (45, 466), (466, 45), (256, 256), (150.4, 380.7)]
    _check_against_truth(psf, sp.image_psf, corners)
    # a constant model cannot follow that field
    psf0 = P.estimate_psf(sp.image, err=sp.image_noise, order=0)
    st = P.get_psf_stamp(psf0, 466, 466)
    assert np.abs(st - sp.image_psf(466, 466, st.shape[0])).sum() > 0.06


def test_estimate_small_fwhm_uses_an_oversampled_grid():
    sp = simulate_pair(shape=(512, 512), image_fwhm=2.2, seed=4)
    psf = P.estimate_psf(sp.image, err=sp.image_noise)
    assert psf["sampling"] == 0.5 and psf["oversampling"] == 2
    _check_against_truth(psf, sp.image_psf, POSITIONS)


def test_saturated_stars_are_not_used():
    sp = simulate_pair(shape=(512, 512), image_fwhm=3.5, saturation=20000.0, star_flux_range=(1e3, 1e6),
                       seed=6)
    assert sp.stars["saturated"].sum() > 10
    psf = P.estimate_psf(sp.image, mask=sp.image_mask, err=sp.image_noise)
    _check_against_truth(psf, sp.image_psf, POSITIONS[:3])
    # same without telling: clipped images are recognised
    psf = P.estimate_psf(sp.image, err=sp.image_noise)
    _check_against_truth(psf, sp.image_psf, POSITIONS[:3])


def test_estimation_errors():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (128, 128))
    with pytest.raises(FitError):
        P.estimate_psf(noise)
    sp = simulate_pair(shape=(256, 256), n_stars=8, seed=1)
    with pytest.raises(FitError, match="usable PSF stars"):
        P.estimate_psf(sp.image, err=sp.image_noise, order=2)
    with pytest.raises(InputError, match="order"):
        P.estimate_psf(sp.image, order=5)


def test_estimate_moffat_psf_with_noisy_wings():
    # beta = 3 Moffat at standard noise: per-pixel S/N of the stacked wings is
    # well below 1 beyond ~2.5 FWHM, so the wings must come from a smooth
    # radial profile and the level must not be set by zeroing the outer ring.
    sp = simulate_pair(shape=(512, 512), psf="moffat", moffat_beta=3, image_fwhm=3.5, seed=3)
    psf = P.estimate_psf(sp.image, err=sp.image_noise)
    _check_against_truth(psf, sp.image_psf, POSITIONS)
    # no core bias: the central 3x3 pixels hold the true fraction of the flux
    st = P.get_psf_stamp(psf, 256, 256)
    tr = sp.image_psf(256, 256, st.shape[0])
    c = st.shape[0] // 2
    core = st[c - 1:c + 2, c - 1:c + 2].sum() / tr[c - 1:c + 2, c - 1:c + 2].sum()
    assert abs(core - 1) < 0.015, core


def test_estimate_undersampled_moffat_psf_on_an_oversampled_grid():
    # FWHM < 2 px: positions fitted with the full model co-adapt with its
    # noise (a skewed, off-centre core); the model's symmetric part centres them.
    sp = simulate_pair(shape=(512, 512), psf="moffat", moffat_beta=3, image_fwhm=1.8, seed=11)
    psf = P.estimate_psf(sp.image, err=sp.image_noise)
    assert psf["oversampling"] >= 2
    sad, _ = _check_against_truth(psf, sp.image_psf, POSITIONS, sad_max=0.02)


# ---- issue 11/12: crowded fields, hot pixels, elongated stars ------------------------------
def _fwhm_of(psf):
    return P.measure_fwhm(P.get_psf_stamp(psf, 0, 0, 0.0, 0.0))


@pytest.fixture(scope="module")
def crowded():
    return simulate_pair(shape=(256, 256), n_stars=500, image_fwhm=3.5, seed=21)


def test_crowded_field_isolation_is_relative_to_the_psf(crowded):
    img = crowded.image
    psf = P.estimate_psf(img, gain=crowded.truth["image_gain"])
    assert psf["nstars"] >= 10
    assert abs(_fwhm_of(psf) / 3.5 - 1) < 0.06, _fwhm_of(psf)
    # the old absolute criterion (no neighbour light at all near the core) runs out of stars,
    # and the error names the options that help
    with pytest.raises(FitError, match="max_contamination"):
        P.estimate_psf(img, gain=crowded.truth["image_gain"], isolation=3.0, max_contamination=1e-4)
    with pytest.raises(InputError):
        P.estimate_psf(img, max_contamination=-1)


def test_hot_pixels_are_not_psf_stars():
    sp = simulate_pair(shape=(256, 256), image_fwhm=3.5, seed=8)
    img = sp.image.copy()
    rng = np.random.default_rng(2)
    img[rng.integers(5, 251, 60), rng.integers(5, 251, 60)] = 60000.0
    psf = P.estimate_psf(img, gain=sp.truth["image_gain"])
    assert abs(_fwhm_of(psf) / 3.5 - 1) < 0.08, _fwhm_of(psf)


def test_elongated_stars_are_accepted():
    sp = simulate_pair(shape=(256, 256), image_fwhm=4.0, image_ellipticity=0.45, seed=4)
    psf = P.estimate_psf(sp.image, gain=sp.truth["image_gain"])
    assert psf["nstars"] >= 10


def test_implausible_psf_is_refused():
    from diffgui.engine.psf.estimation import _check_plausible

    _check_plausible(3.4, 3.5)
    for fwhm, fwhm0 in ((0.8, 0.9), (1.5, 3.5), (8.0, 3.5)):
        with pytest.raises(FitError, match="implausible PSF"):
            _check_plausible(fwhm, fwhm0)
