"""ZOGY (diffgui.engine.zogy and run_zogy) on simulated pairs with known truth and on real data."""

import os

import numpy as np
import pytest

from bench.metrics import recovered_vs_ideal, robust_std, source_mask
from diffgui.engine import Cancelled, FitError, InputError, run_zogy
from diffgui.engine import zogy as Z
from diffgui.engine.simulation import simulate_pair
from shared_paths import DATA

JWST = str(DATA / "jwst-nircam-a2744")


def _true_psfs(sp, size=31):
    h, w = sp.image.shape
    return sp.image_psf(w // 2, h // 2, size), sp.template_psf(w // 2, h // 2, size)


def _diff_sigma(sp):
    """White noise of ZOGY's D: sqrt(sigma_N**2 + sigma_R**2 / F_r**2)."""
    return np.sqrt(sp.image_noise ** 2 + (sp.truth["flux_scale"] * sp.template_noise) ** 2)


def _signed_peak(img, x, y, sign):
    v, px, py = Z.subpixel_peak(sign * img, x, y)
    return sign * v, px, py


@pytest.fixture(scope="module")
def sim():
    return simulate_pair(shape=(512, 512), transients=12, transient_snr_range=(7.0, 150.0), seed=11)


@pytest.fixture(scope="module")
def result_true_psf(sim):
    pn, pr = _true_psfs(sim)
    return run_zogy(sim.image, sim.template, err=sim.image_noise, template_err=sim.template_noise,
                    image_psf=pn, template_psf=pr, get_psf=True, get_Fpsf=True)


@pytest.fixture(scope="module")
def result_estimated_psf(sim):
    info = {}
    out = Z.run(sim.image, sim.template, err=sim.image_noise, template_err=sim.template_noise,
                get_Fpsf=True, _result=info)
    return out, info


def _check_quality(sp, D, S_corr, Fpsf, Fpsf_err, tol_s=0.05):
    free = ~source_mask(sp)
    free[:20] = free[-20:] = False
    free[:, :20] = free[:, -20:] = False
    q_s = robust_std(S_corr[free])
    q_d = robust_std((D / _diff_sigma(sp))[free])
    assert abs(q_s - 1) < tol_s, q_s
    assert abs(q_d - 1) < 0.03, q_d
    # no dipoles at constant, unsaturated stars
    st = sp.stars[~sp.stars["saturated"] & ~sp.stars["variable"]]
    ix, iy = np.rint(st["x"]).astype(int), np.rint(st["y"]).astype(int)
    worst = np.max([np.abs(S_corr[y - 1:y + 2, x - 1:x + 2]).max() for x, y in zip(ix, iy)
                    if 1 <= x < 511 and 1 <= y < 511], axis=0) if len(st) else 0
    frac = np.mean([np.abs(S_corr[y - 1:y + 2, x - 1:x + 2]).max() < 5 for x, y in zip(ix, iy)
                    if 1 <= x < 511 and 1 <= y < 511])
    assert frac >= 0.99, (frac, worst)
    # transients
    rec = recovered_vs_ideal(D, _diff_sigma(sp), sp, fpsf=Fpsf, fpsf_err=Fpsf_err)
    tr = sp.transients
    for row, t in zip(rec, tr):
        sign = np.sign(t["flux"])
        if t["ideal_snr"] >= 10:
            assert row["fpsf_ratio"] >= 0.9, (t["kind"], t["ideal_snr"], row["fpsf_ratio"])
        if t["ideal_snr"] >= 7:
            s_peak = _signed_peak(S_corr, t["x"], t["y"], sign)[0]
            assert sign * s_peak >= 5, (t["kind"], t["ideal_snr"], s_peak)
        f, px, py = _signed_peak(Fpsf, t["x"], t["y"], sign)
        assert np.sign(f) == sign  # fading sources come out negative
        snr = abs(f) / Fpsf_err[int(round(py)), int(round(px))]
        if snr > 20:
            # 3 % of truth, plus the statistical error of the measurement itself
            assert abs(f / t["flux"] - 1) < 0.03 + 2.0 / snr, (t["kind"], snr, f / t["flux"])
    return q_s, q_d


def test_true_psfs_noise_stars_and_transients(sim, result_true_psf):
    D, S_corr, P_D, Fpsf, Fpsf_err = result_true_psf
    assert (sim.transients["flux"] < 0).any()  # the pair has fading sources
    _check_quality(sim, D, S_corr, Fpsf, Fpsf_err)


def test_return_contract(sim, result_true_psf):
    D, S_corr, P_D, Fpsf, Fpsf_err = result_true_psf
    for a in (D, S_corr, Fpsf, Fpsf_err):
        assert a.shape == sim.image.shape and a.dtype == np.float64 and np.isfinite(a).all()
    assert P_D.shape == (31, 31) and P_D.sum() == pytest.approx(1.0)
    yy, xx = np.mgrid[-15:16, -15:16]
    assert abs((P_D * xx).sum()) < 0.01 and abs((P_D * yy).sum()) < 0.01
    pn, pr = _true_psfs(sim)
    out = run_zogy(sim.image[:64, :64], sim.template[:64, :64], image_psf=pn, template_psf=pr, scale=0.9)
    assert isinstance(out, list) and len(out) == 2
    out = run_zogy(sim.image[:64, :64], sim.template[:64, :64], image_psf=pn, template_psf=pr, scale=0.9,
                   get_Fpsf=True)
    assert len(out) == 4


def test_estimated_psfs(sim, result_estimated_psf):
    (D, S_corr, Fpsf, Fpsf_err), info = result_estimated_psf
    assert info["image_psf"]["type"] == "diffgui" and len(info["image_obj"]) > 50
    # F_r from the object lists, refined on the images (truth 1 / 1.1); the fit on
    # the images inherits the estimated PSFs' ~1 % core errors
    assert info["tiles"][0]["scale"] == pytest.approx(1 / sim.truth["flux_scale"], rel=0.03)
    _check_quality(sim, D, S_corr, Fpsf, Fpsf_err)


def test_fit_shift_and_scale():
    sp = simulate_pair(shape=(512, 512), template_shift=(0.2, -0.15), flux_scale=1 / 1.3, seed=12)
    pn, pr = _true_psfs(sp)
    info = {}
    D, S_corr = Z.run(sp.image, sp.template, err=sp.image_noise, template_err=sp.template_noise,
                      image_psf=pn, template_psf=pr, _result=info)   # scale=None, no catalogues
    t = info["tiles"][0]
    assert t["scale"] == pytest.approx(1.3, rel=0.01)
    assert t["shift"][0] == pytest.approx(0.2, abs=0.03) and t["shift"][1] == pytest.approx(-0.15, abs=0.03)
    free = ~source_mask(sp)
    assert abs(robust_std(S_corr[free]) - 1) < 0.05
    # without the fit the shift leaves dipoles at bright stars
    D0, S0 = run_zogy(sp.image, sp.template, err=sp.image_noise, template_err=sp.template_noise,
                      image_psf=pn, template_psf=pr, scale=1.3, fit_scale=False, fit_shift=False)
    bright = sp.stars[(sp.stars["template_flux"] > 2e4) & ~sp.stars["variable"]]
    ix, iy = np.rint(bright["x"]).astype(int), np.rint(bright["y"]).astype(int)
    assert np.abs(S0[iy, ix]).max() > np.abs(S_corr[iy, ix]).max()


def test_scale_none_with_explicit_psfs_and_no_catalogues(sim):
    pn, pr = _true_psfs(sim)
    info = {}
    Z.run(sim.image[:200, :200], sim.template[:200, :200], image_psf=pn, template_psf=pr,
          fit_scale=False, fit_shift=False, _result=info)
    assert info["tiles"][0]["scale"] == 1.0


@pytest.mark.parametrize("shape", [(511, 511), (255, 257), (256, 511)])
def test_odd_sizes_do_not_shift_d_or_scorr(shape):
    h, w = shape
    x0, y0 = w // 2 + 0.0, h // 2 + 0.0
    sp = simulate_pair(shape=shape, n_stars=40, transients=[{"x": x0, "y": y0, "flux": 20000.0}],
                       seed=13)
    pn, pr = _true_psfs(sp)
    scale = 1 / sp.truth["flux_scale"]
    D, S_corr, Fpsf, Fpsf_err = run_zogy(sp.image, sp.template, err=sp.image_noise,
                                         template_err=sp.template_noise, image_psf=pn, template_psf=pr,
                                         scale=scale, fit_scale=False, fit_shift=False, get_Fpsf=True)
    for img in (D, S_corr, Fpsf):
        sub = img[int(y0) - 5:int(y0) + 6, int(x0) - 5:int(x0) + 6]
        py, px = np.unravel_index(np.argmax(sub), sub.shape)
        assert (px - 5, py - 5) == (0, 0)
    # and the peak is symmetric: the sub-pixel peak is on the true position
    _, px, py = Z.subpixel_peak(Fpsf, x0, y0)
    assert abs(px - x0) < 0.05 and abs(py - y0) < 0.05


def test_fpsf_normalisation_uses_h_times_w():
    sp = simulate_pair(shape=(256, 400), n_stars=60, transients=[{"x": 200.3, "y": 127.6, "flux": 30000.0}],
                       seed=14)
    pn, pr = _true_psfs(sp)
    N = sp.image - sp.image_background
    R = sp.template - sp.template_background
    kw = dict(scale=1 / sp.truth["flux_scale"], get_Fpsf=True)
    wide = Z.zogy_subtract(N, R, pn, pr, sp.image_noise, sp.template_noise, **kw)
    tall = Z.zogy_subtract(N.T.copy(), R.T.copy(), pn.T, pr.T, sp.image_noise.T, sp.template_noise.T, **kw)
    square = Z.zogy_subtract(N[:, 72:328], R[:, 72:328], pn, pr, sp.image_noise[:, 72:328],
                             sp.template_noise[:, 72:328], **kw)
    assert wide.F_S == pytest.approx(square.F_S, rel=2e-3)
    assert tall.F_S == pytest.approx(square.F_S, rel=2e-3)
    f, px, py = Z.subpixel_peak(wide.Fpsf, 200.3, 127.6)
    err = wide.Fpsf_err[int(round(py)), int(round(px))]
    assert abs(f - 30000.0) < 3 * err
    assert np.allclose(tall.Fpsf.T, wide.Fpsf, rtol=1e-6, atol=1e-6 * np.abs(wide.Fpsf).max())


def test_callers_arrays_are_not_modified(sim):
    img = sim.image[:128, :128].copy()
    img[10:14, 20:24] = np.nan
    err = sim.image_noise[:128, :128].copy()
    terr = sim.template_noise[:128, :128].copy()
    copies = [a.copy() for a in (img, err, terr)]
    pn, pr = _true_psfs(sim, 15)
    run_zogy(img, sim.template[:128, :128], err=err, template_err=terr, image_psf=pn, template_psf=pr)
    for a, b in zip((img, err, terr), copies):
        assert np.array_equal(a, b, equal_nan=True)


def test_masked_pixels_and_nans_do_not_ring(sim):
    pn, pr = _true_psfs(sim)
    kw = dict(err=sim.image_noise, template_err=sim.template_noise, image_psf=pn, template_psf=pr,
              scale=1 / sim.truth["flux_scale"], fit_scale=False, fit_shift=False)
    D0, S0 = run_zogy(sim.image, sim.template, **kw)
    img = sim.image.copy()
    img[100:130, 200:260] = np.nan                 # a hole
    mask = np.zeros(img.shape, bool)
    img[:, 400] = 1e6                              # a hot column, masked
    mask[:, 400] = True
    tmpl = sim.template.copy()
    tmpl[300:304, 50:54] = np.inf
    D1, S1 = run_zogy(img, tmpl, mask=mask, **kw)
    bad = ~np.isfinite(img) | mask | ~np.isfinite(tmpl)
    assert (D1[bad] == 0).all() and (S1[bad] == 0).all()
    from scipy import ndimage

    near = ndimage.binary_dilation(bad, iterations=40)
    sig = _diff_sigma(sim)
    assert np.abs((D1 - D0) / sig)[~near].max() < 0.05
    assert np.abs(S1 - S0)[~near].max() < 0.05
    # close to the defects S_corr is damped, never spiking
    assert np.abs(S1[near & ~bad]).max() < max(6.0, np.abs(S0[near & ~bad]).max() + 1)


def test_tiled_and_untiled_agree(sim):
    pn, pr = _true_psfs(sim)
    kw = dict(err=sim.image_noise, template_err=sim.template_noise, image_psf=pn, template_psf=pr,
              scale=1 / sim.truth["flux_scale"], fit_scale=False, fit_shift=False, get_Fpsf=True,
              background="none")  # a per-tile mesh background differs by its noise
    one = run_zogy(sim.image, sim.template, **kw)
    four = run_zogy(sim.image, sim.template, nx=2, ny=2, overlap=50, **kw)
    sig = _diff_sigma(sim)
    assert np.abs((four[0] - one[0]) / sig).max() < 0.02
    assert np.abs(four[1] - one[1]).max() < 0.02
    assert np.abs((four[2] - one[2]) / one[3]).max() < 0.02
    # with per-tile fits the difference stays far below the noise on source-free pixels
    kw.update(fit_scale=True, fit_shift=True)
    one = run_zogy(sim.image, sim.template, **kw)
    four = run_zogy(sim.image, sim.template, nx=2, ny=2, **kw)
    free = ~source_mask(sim)
    assert robust_std(((four[0] - one[0]) / sig)[free]) < 0.02


def test_zero_overlap_covers_remainder_columns(sim):
    pn, pr = _true_psfs(sim, 15)
    img, tmpl = sim.image[:120, :301], sim.template[:120, :301]
    D, S = run_zogy(img, tmpl, image_psf=pn, template_psf=pr, nx=2, ny=1, overlap=0, scale=0.9,
                    fit_scale=False, fit_shift=False)
    assert np.all(D[:, 300] != 0) and np.all(S[:, 300] != 0)


def test_bad_inputs_give_clear_errors(sim):
    img, tmpl = sim.image[:100, :100], sim.template[:100, :100]
    pn, pr = _true_psfs(sim, 15)
    with pytest.raises(InputError, match="larger than"):
        run_zogy(img[:20, :20], tmpl[:20, :20], image_psf=np.ones((41, 41)), template_psf=pr, scale=1)
    with pytest.raises(InputError, match="inconsistent"):
        run_zogy(img, tmpl, image_psf={"data": np.ones((3, 15, 15)), "degree": 0}, template_psf=pr, scale=1)
    with pytest.raises(InputError, match="inconsistent"):
        run_zogy(img, tmpl, image_psf=pn, template_psf={"data": pr[None], "width": 17}, scale=1)
    mask = np.zeros(img.shape, bool)
    mask[:, :50] = True
    with pytest.raises(InputError, match="entirely masked"):
        run_zogy(img, tmpl, mask=mask, image_psf=pn, template_psf=pr, nx=2, ny=1, overlap=0, scale=1)
    from astropy.table import Table

    a = Table({"x": np.arange(10) * 9.0 + 5, "y": np.full(10, 20.0), "flux": np.full(10, 1e4),
               "fluxerr": np.full(10, 10.0), "flags": np.zeros(10, int)})
    b = Table({"x": np.arange(10) * 9.0 + 5, "y": np.full(10, 80.0), "flux": np.full(10, 1e4),
               "fluxerr": np.full(10, 10.0), "flags": np.zeros(10, int)})
    with pytest.raises(FitError, match="common"):
        run_zogy(img, tmpl, image_psf=pn, template_psf=pr, image_obj=a, template_obj=b)
    with pytest.raises(InputError, match="unknown option"):
        run_zogy(img, tmpl, image_psf=pn, template_psf=pr, scale=1, bogus=3)
    with pytest.raises(InputError, match="dx"):
        run_zogy(img, tmpl, image_psf=pn, template_psf=pr, scale=1, dx=-1)
    with pytest.raises(InputError, match="same shape"):
        run_zogy(img, tmpl[:90], image_psf=pn, template_psf=pr)


def test_cancel_and_verbose(sim):
    pn, pr = _true_psfs(sim, 15)
    msgs = []
    run_zogy(sim.image[:128, :128], sim.template[:128, :128], image_psf=pn, template_psf=pr,
             verbose=msgs.append, psfex_extra={"X": 1})
    assert any("F_r=" in m for m in msgs) and any("psfex_extra" in m for m in msgs)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        run_zogy(sim.image[:128, :128], sim.template[:128, :128], image_psf=pn, template_psf=pr,
                 nx=2, cancel=cancel)


def test_psf_clean_and_psf_dicts(sim):
    from diffgui.engine.psf import psf_from_array

    pn, pr = _true_psfs(sim)
    img, tmpl = sim.image[:160, :160], sim.template[:160, :160]
    _, _, pd0 = run_zogy(img, tmpl, image_psf=psf_from_array(pn), template_psf=pr, scale=0.9, get_psf=True)
    _, _, pd1 = run_zogy(img, tmpl, image_psf=pn, template_psf=pr, scale=0.9, get_psf=True, psf_clean=0.05)
    assert pd0.sum() == pytest.approx(1) and pd1.sum() == pytest.approx(1)
    assert np.abs(pd0 - pd1).sum() > 1e-3


def test_catalogue_scale_is_robust():
    from astropy.table import Table

    rng = np.random.default_rng(0)
    n = 50
    x, y = rng.uniform(0, 500, n), rng.uniform(0, 500, n)
    fi = 10 ** rng.uniform(3, 5, n)
    ft = 1.25 * fi * (1 + rng.normal(0, 0.01, n))
    ft[:5] *= 3  # variable stars
    a = Table({"x": x, "y": y, "flux": fi, "fluxerr": 0.01 * fi, "flags": np.zeros(n, int)})
    b = Table({"x": x + 0.1, "y": y - 0.1, "flux": ft, "fluxerr": 0.01 * ft, "flags": np.zeros(n, int)})
    fr, npairs = Z.catalogue_scale(a, b, 1.0)
    assert npairs == n and fr == pytest.approx(1.25, rel=0.01)


def test_white_noise_is_not_whitened(sim):
    N = sim.image - sim.image_background
    assert Z.estimate_noise_correlation(N, sim.image_noise) is None
    rng = np.random.default_rng(1)
    white = rng.normal(size=(300, 300))
    from scipy import ndimage

    corr = ndimage.uniform_filter(white, 2, mode="wrap")      # 2x2 box: lag-1 correlation 0.5
    c = Z.estimate_noise_correlation(corr)
    assert c is not None and c[2, 3] == pytest.approx(0.5, abs=0.05) and c[3, 3] == pytest.approx(0.25, abs=0.05)


@pytest.mark.skipif(not os.path.isdir(JWST), reason="JWST data not available")
def test_real_jwst_pair():
    from astropy.io import fits
    from scipy import ndimage

    def get(name):
        return fits.getdata(os.path.join(JWST, name))

    sci, tpl = get("science.fits"), get("template.fits")
    D, S_corr, Fpsf, Fpsf_err = run_zogy(
        sci, tpl, err=get("science_noise.fits"), template_err=get("template_noise.fits"),
        image_psf=get("science_psf.fits"), template_psf=get("template_psf.fits"), get_Fpsf=True,
        noise_correlation="auto")
    free = ~source_mask(np.nan_to_num(sci.astype(float)), template=np.nan_to_num(tpl.astype(float)))
    q = robust_std(S_corr[free])
    assert 0.9 <= q <= 1.2, q
    # the strong residual the SFFT authors found near (278, 642) is the strongest feature
    a = np.abs(S_corr)
    peaks = np.argwhere((a == ndimage.maximum_filter(a, 15)) & (a > 5))
    top = max(peaks, key=lambda p: a[p[0], p[1]])
    assert np.hypot(top[1] - 278, top[0] - 642) < 12
    assert np.abs(Fpsf / Fpsf_err)[632:653, 268:289].max() > 20


def test_kwargs_reach_psf_estimation():
    sp = simulate_pair(shape=(320, 320), n_stars=220, seed=15)
    info = {}
    Z.run(sp.image, sp.template, err=sp.image_noise, template_err=sp.template_noise, order=1,
          psf_size=21, sn=15, _result=info)
    for key in ("image_psf", "template_psf"):
        p = info[key]
        assert p["degree"] == 1 and p["ncoeffs"] == 3
        assert p["width"] * p["sampling"] == pytest.approx(21, abs=1)


# ---- issue 11: a background difference between the images --------------------------------
@pytest.fixture(scope="module")
def small_sim():
    return simulate_pair(shape=(256, 256), transients=4, transient_snr_range=(10.0, 40.0), seed=17)


def test_background_difference_is_removed(small_sim):
    sp = small_sim
    pn, pr = _true_psfs(sp)
    yy, xx = np.mgrid[:256, :256]
    sig = float(np.median(sp.image_noise))
    # a sky estimate off by 0.2 sigma plus a gradient: S_corr sums it over the PSF area
    offset = sig * (0.2 + 0.3 * (xx - 128) / 256)
    kw = dict(err=sp.image_noise, template_err=sp.template_noise, image_psf=pn, template_psf=pr,
              scale=1 / sp.truth["flux_scale"])
    free = ~source_mask(sp)
    free[:20] = free[-20:] = False
    free[:, :20] = free[:, -20:] = False
    # zogy_subtract takes background-subtracted images: the true skies (simulate_pair's
    # defaults) are removed, the offset stays as an error of the science sky estimate
    N = sp.image - 1000.0 + offset
    R = sp.template - 500.0
    one = dict(err_n=sp.image_noise, err_r=sp.template_noise, scale=1 / sp.truth["flux_scale"],
               fit_scale=True, fit_shift=True)
    S_none = Z.zogy_subtract(N, R, pn, pr, background="none", **one).S_corr
    res = Z.zogy_subtract(N, R, pn, pr, background="mesh", **one)
    assert np.median(S_none[free]) > 0.8
    assert abs(np.median(res.S_corr[free])) < 0.1
    assert abs(robust_std(res.S_corr[free]) - 1) < 0.06
    assert abs(res.scale * sp.truth["flux_scale"] - 1) < 0.01
    with pytest.raises(InputError, match="background"):
        run_zogy(sp.image, sp.template, background="plane", **kw)


# ---- issue 12 item 7: sparse bad pixels and hot pixels ------------------------------------
def _n_detections(S, thresh=5.0):
    from scipy import ndimage

    return ndimage.label(np.abs(S) > thresh)[1]


def test_sparse_masks_and_hot_pixels(small_sim):
    sp = small_sim
    kw = dict(err=True, template_err=True, image_gain=sp.truth["image_gain"],
              template_gain=sp.truth["template_gain"])
    free = ~source_mask(sp)
    _, S0 = run_zogy(sp.image, sp.template, **kw)
    q0, n0 = robust_std(S0[free & (S0 != 0)]), _n_detections(S0)
    rng = np.random.default_rng(3)
    hot = sp.image.copy()
    hot[rng.integers(5, 251, 60), rng.integers(5, 251, 60)] = 60000.0
    inf = sp.image.copy()
    inf[rng.integers(0, 256, 20), rng.integers(0, 256, 20)] = np.inf
    inf[rng.integers(0, 256, 20), rng.integers(0, 256, 20)] = -np.inf
    cases = {"hot": (hot, None, None), "inf": (inf, None, None)}
    for frac in (0.005, 0.02):
        cases[frac] = (sp.image, rng.random(sp.image.shape) < frac, rng.random(sp.image.shape) < frac)
    for label, (img, m, tm) in cases.items():
        _, S = run_zogy(img, sp.template, m, tm, **kw)
        q = robust_std(S[free & (S != 0)])
        assert abs(q / q0 - 1) < 0.1, (label, q, q0)
        assert _n_detections(S) <= n0, label


def test_implausible_flux_scale_is_refused(small_sim):
    from diffgui.engine.common.detection import detect_objects

    sp = small_sim
    pn, pr = _true_psfs(sp)
    obj_i = detect_objects(sp.image, gain=sp.truth["image_gain"])
    obj_t = detect_objects(sp.template, gain=sp.truth["template_gain"])
    obj_t["flux"] *= 5.0  # object lists that disagree with the images
    with pytest.raises(FitError, match="implausible flux scale"):
        run_zogy(sp.image, sp.template, err=sp.image_noise, template_err=sp.template_noise,
                 image_psf=pn, template_psf=pr, image_obj=obj_i, template_obj=obj_t)
