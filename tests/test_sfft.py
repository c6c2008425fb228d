"""SFFT: the FFT-assembled solver (diffgui.engine.sfft) and run_sfft.

Unit tests use small pairs (128-512 px). Acceptance tests use simulated pairs
with known truth and the real DECam/JWST data with their published differences.
"""

import os
import threading

import numpy as np
import pytest

from bench.metrics import normalised_residual, residual_at_stars, robust_std, source_mask
from diffgui.engine import sfft
from diffgui.engine.sfft import assembly as sfft_assembly, basis as sfft_basis
from diffgui.engine.errors import Cancelled, FitError, InputError
from diffgui.engine.simulation import simulate_pair
from diffgui.engine.api import run_sfft
from shared_paths import DATA as SHARED_DATA

DATA = str(SHARED_DATA)


# ---- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair256():
    return simulate_pair(shape=(256, 256), seed=11, flux_scale=1.1, image_sky=1000.0,
                         template_sky=500.0, sky_gradient=(20.0, 10.0))


@pytest.fixture(scope="module")
def acceptance_pair():
    """Flux scale varying 10 % and science FWHM 20 % across the field (768^2: ~880
    stars; at 512^2 the corner flux scale scatters by 0.3-0.6 % from star sampling alone)."""
    return simulate_pair(shape=(768, 768), seed=3, flux_scale=1.1, flux_scale_gradient=0.1,
                         image_fwhm_gradient=0.2, sky_gradient=(20.0, 10.0), transients=5)


@pytest.fixture(scope="module")
def acceptance_run(acceptance_pair):
    p = acceptance_pair
    return run_sfft(p.image, p.template, err=p.image_noise, template_err=p.template_noise,
                    get_convolved=True, get_scaled=True, get_noise=True, get_kernel=True)


def _delta_pair(shape=(128, 160), seed=0, kernel=None, bg=(5.0, 0.3, -0.2)):
    """Noiseless template of point sources and the science = template * kernel + plane."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    tpl = np.zeros(shape)
    ys = rng.integers(8, ny - 8, 120)
    xs = rng.integers(8, nx - 8, 120)
    tpl[ys, xs] = rng.uniform(50, 500, ys.size)
    tpl += rng.normal(0, 1.0, shape)          # structure everywhere (well-posed fit)
    from scipy.signal import fftconvolve
    sci = fftconvolve(tpl, kernel, mode="same")
    yy, xx = np.mgrid[0:ny, 0:nx]
    xt = sfft_basis.normalise(xx, nx)
    yt = sfft_basis.normalise(yy, ny)
    sci += bg[0] + bg[1] * yt + bg[2] * xt
    return sci, tpl


# ---- basis ------------------------------------------------------------------------------
def test_poly_exponents_order_matches_stdpipe():
    assert sfft_basis.poly_exponents(2) == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0)]


def test_shift_expansion_is_exact():
    exps = sfft_basis.poly_exponents(3)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50)
    ux, uy = np.array([0.3, -0.05]), np.array([-0.2, 0.1])
    E = sfft_basis.shift_expansion(exps, exps, ux, uy)
    for k in range(2):
        lhs = sfft_basis.poly_values(exps, x + ux[k], y + uy[k])
        rhs = sfft_basis.poly_values(exps, x, y) @ E[k].T
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


# ---- solver: assembly, layout, orientation ---------------------------------------------
def _solve_both(img, tpl, **kw):
    a = sfft.solve(img, tpl, method="fft", **kw)
    b = sfft.solve(img, tpl, method="direct", **kw)
    return a, b


def test_fft_assembly_equals_direct_assembly(pair256):
    """FFT normal equations + exact corrections == dense assembly (uniform weights)."""
    p = pair256
    m = np.zeros(p.image.shape, bool)
    m[100:120, 30:60] = True
    tm = np.zeros(p.image.shape, bool)
    tm[200:203, 150:152] = True
    a, b = _solve_both(p.image[:251, :237], p.template[:251, :237], mask=m[:251, :237],
                       template_mask=tm[:251, :237], kernel_shape=(7, 5), bg_poly_order=3,
                       sigma_clip=3.0, max_iter=3)
    assert a.mode == "fft" and b.mode == "direct"
    assert a.n_good == b.n_good and a.n_clipped == b.n_clipped
    scale = np.abs(b.kernel_coeffs).max()
    np.testing.assert_allclose(a.kernel_coeffs, b.kernel_coeffs, atol=1e-8 * scale)
    np.testing.assert_allclose(a.bg_coeffs, b.bg_coeffs, atol=1e-8 * np.abs(b.bg_coeffs).max())
    np.testing.assert_allclose(a.diff, b.diff, atol=1e-3)   # complex64 spectra: ~1e-5 ADU


def test_individual_weights_and_their_clipping_are_exact(pair256):
    """A noise map with two levels: the FFT mode's individual weights are then the
    true ones, so FFT and direct assembly agree, through clipping of such pixels too."""
    p = pair256
    rng = np.random.default_rng(4)
    err = np.full(p.image.shape, 25.0)
    noisy = rng.random(p.image.shape) < 0.03
    err[noisy] = 60.0
    img = p.image + rng.normal(0, 1, p.image.shape) * np.sqrt(err ** 2 - 25.0 ** 2)
    hits = rng.integers(10, 246, (2, 300))
    img[hits[0], hits[1]] += 3000.0                  # cosmic rays, many on noisy pixels
    a, b = _solve_both(img, p.template, err=err, max_iter=3)
    assert a.params["n_weighted"] == np.count_nonzero(noisy & a.fit_mask)
    assert a.n_clipped == b.n_clipped > 0
    np.testing.assert_allclose(a.kernel_coeffs, b.kernel_coeffs,
                               atol=1e-8 * np.abs(b.kernel_coeffs).max())
    np.testing.assert_allclose(a.bg_coeffs, b.bg_coeffs, atol=1e-8 * np.abs(b.bg_coeffs).max())


def test_strips_with_boundary_terms_are_exact(pair256, monkeypatch):
    """Many small strips (cross terms at every boundary, overlap-add) == one strip."""
    p = pair256
    one = sfft.solve(p.image, p.template, err=p.image_noise, sigma_clip=None, max_iter=1)
    plan_init = sfft_assembly.StripPlan.__init__

    def small(self, shape, hy, hx, max_pixels=None):
        plan_init(self, shape, hy, hx, 20000)

    monkeypatch.setattr(sfft_assembly.StripPlan, "__init__", small)
    many = sfft.solve(p.image, p.template, err=p.image_noise, sigma_clip=None, max_iter=1)
    assert sfft_assembly.StripPlan((256, 256), 6, 6).starts != [0]
    np.testing.assert_allclose(many.kernel_coeffs, one.kernel_coeffs,
                               atol=1e-9 * np.abs(one.kernel_coeffs).max())
    np.testing.assert_allclose(many.diff, one.diff, atol=1e-3)


def test_recovers_known_asymmetric_kernel_orientation():
    """A shifted, asymmetric kernel comes back in evaluate_kernel_at's convolution layout."""
    k = np.zeros((5, 5))
    k[2, 2], k[1, 3], k[3, 2] = 0.6, 0.3, 0.1     # offsets (dy, dx): (0,0), (-1,+1), (+1,0)
    sci, tpl = _delta_pair(kernel=k)
    r = sfft.solve(sci, tpl, kernel_shape=(5, 5), kernel_poly_order=0, flux_poly_order=0,
                   bg_poly_order=1, sigma_clip=None, max_iter=1, ridge=0.0)
    np.testing.assert_allclose(r.evaluate_kernel_at(80, 64), k, atol=1e-6)
    np.testing.assert_allclose(r.bg_coeffs, [5.0, 0.3, -0.2], atol=1e-4)
    inner = ~r.dmask
    assert np.abs(r.diff[inner]).max() < 1e-6 * tpl.max()
    assert r.evaluate_flux_scale(10, 20) == pytest.approx(1.0, abs=1e-6)


def test_result_helpers_are_consistent(pair256):
    p = pair256
    r = sfft.solve(p.image, p.template, err=p.image_noise, max_iter=1)
    ny, nx = r.image_shape
    fmap, bmap = r.flux_scale_map(), r.background_map()
    assert fmap.shape == bmap.shape == (ny, nx)
    assert r.evaluate_flux_scale(17, 33) == pytest.approx(fmap[33, 17], rel=1e-12)
    assert r.evaluate_background(200, 5) == pytest.approx(bmap[5, 200], rel=1e-12)
    assert r.evaluate_kernel_at(17, 33).sum() == pytest.approx(fmap[33, 17], rel=1e-12)
    arr = r.evaluate_flux_scale(np.array([[1, 2], [3, 4]]), np.array([[5, 6], [7, 8]]))
    assert arr.shape == (2, 2)
    xs, ys, grid = r.kernel_grid(4, 3)
    assert grid.shape == (3, 4, 7, 7) and xs.size == 4 and ys.size == 3
    np.testing.assert_allclose(grid[1, 2], r.evaluate_kernel_at(xs[2], ys[1]), atol=1e-12)
    mosaic = r.kernel_mosaic(3)
    assert mosaic.shape == (3 * 8 - 1, 3 * 8 - 1)
    assert r.kernel_coeffs.shape == (49, 6) and r.bg_coeffs.shape == (6,)
    np.testing.assert_allclose(r.model, r.convolved + bmap)
    assert r.n_iter >= 1 and r.n_good > 0 and r.chi2 > 0 and r.rms > 0 and r.time > 0
    assert "flux scale" in r.summary()


# ---- the pedestal defect ----------------------------------------------------------------
def test_unequal_sky_pedestal_gives_right_flux_scale(pair256):
    """Template sky 500, science sky 1000 (+ gradient): stdpipe 0.4.1's default ridge
    fitted a kernel sum of ~2; ours must give 1.1 with the default parameters."""
    p = pair256
    assert p.truth["template_sky"] == 500 and p.truth["image_sky"] == 1000
    out = run_sfft(p.image, p.template, err=p.image_noise, template_err=p.template_noise,
                   get_noise=True, get_kernel=True)
    diff, noise, r = out
    fs = r.flux_scale_map()
    # ~90 stars in 256^2: the centre is precise, the corners extrapolate the gradient.
    assert abs(fs[128, 128] / 1.1 - 1) < 0.005
    assert np.abs(fs / 1.1 - 1).max() < 0.015
    st = residual_at_stars(diff, noise, p.stars, mask=r.dmask)
    assert st["n_stars"] > 20
    assert st["mean_abs"] < 1.5
    assert abs(st["flux_left"]) < 0.01
    # A much stronger ridge still cannot push the sky ratio into the kernel sum.
    r2 = sfft.solve(p.image, p.template, err=p.image_noise, ridge=1e-3, max_iter=1)
    assert abs(r2.evaluate_flux_scale(128, 128) / 1.1 - 1) < 0.005
    assert r2.evaluate_background(128, 128) == pytest.approx(1000 - 1.1 * 500, abs=10)


# ---- acceptance on simulated pairs ------------------------------------------------------
def test_acceptance_noise_normalised_residual(acceptance_pair, acceptance_run):
    p = acceptance_pair
    diff, conv, scaled, noise, r = acceptance_run
    q = normalised_residual(diff, noise, mask=r.dmask, exclude=source_mask(p))
    assert abs(q - 1.0) < 0.03
    qs = robust_std(scaled, r.dmask | source_mask(p))
    assert abs(qs - 1.0) < 0.03


def test_acceptance_residual_at_stars(acceptance_pair, acceptance_run):
    p = acceptance_pair
    diff, conv, scaled, noise, r = acceptance_run
    tr = np.c_[p.transients["x"], p.transients["y"]]
    st = residual_at_stars(diff, noise, p.stars, mask=r.dmask, exclude_positions=tr)
    assert st["n_stars"] > 100
    assert st["mean_abs"] < 1.5
    assert abs(st["flux_left"]) < 0.005


def test_acceptance_flux_scale_everywhere(acceptance_pair, acceptance_run):
    p = acceptance_pair
    r = acceptance_run[-1]
    ny, nx = r.image_shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    rel = r.flux_scale_map() / p.flux_scale_at(xx, yy) - 1
    assert np.abs(rel).max() < 0.005


def test_acceptance_transients_are_kept(acceptance_pair, acceptance_run):
    """Real transients stay in the difference at about their ideal S/N."""
    p = acceptance_pair
    diff, conv, scaled, noise, r = acceptance_run
    for t in p.transients:
        x, y = int(round(t["x"])), int(round(t["y"]))
        psf = p.image_psf(t["x"], t["y"])
        h = psf.shape[0] // 2
        d = diff[y - h:y + h + 1, x - h:x + h + 1]
        v = noise[y - h:y + h + 1, x - h:x + h + 1] ** 2
        flux = np.sum(d * psf / v) / np.sum(psf * psf / v)
        assert flux == pytest.approx(t["flux"], abs=4 * np.sqrt(1 / np.sum(psf * psf / v)))


def test_err_true_builds_noise_maps(pair256):
    p = pair256
    diff, scaled, noise = run_sfft(p.image, p.template, err=True, template_err=True,
                                   image_gain=p.truth["image_gain"],
                                   template_gain=p.truth["template_gain"],
                                   get_scaled=True, get_noise=True)
    # 0 only on the 3-px border the 7x7 kernel cannot reach (masked, issue 12)
    assert np.all(np.isfinite(noise)) and np.all(noise[3:-3, 3:-3] > 0) and np.all(noise[:3] == 0)
    q = normalised_residual(diff, noise, exclude=source_mask(p))
    assert 0.93 < q < 1.07


# ---- run_sfft contract ------------------------------------------------------------------
def test_return_contract(pair256):
    p = pair256
    bare = run_sfft(p.image, p.template, max_iter=1)
    assert isinstance(bare, np.ndarray) and bare.shape == p.image.shape and bare.dtype == np.float64
    out = run_sfft(p.image, p.template, max_iter=1, get_convolved=True, get_scaled=True,
                   get_noise=True, get_kernel=True)
    assert len(out) == 5
    diff, conv, scaled, noise, r = out
    assert isinstance(r, sfft.SFFTResult)
    np.testing.assert_allclose(diff, bare)
    ok = ~r.dmask                     # the kernel border and template defects are 0 (issue 12)
    np.testing.assert_allclose(diff[ok], (p.image - conv - r.background_map())[ok], atol=1e-9)
    assert np.all(diff[r.dmask] == 0) and np.all(noise[r.dmask] == 0)
    three = run_sfft(p.image, p.template, max_iter=1, get_noise=True, get_kernel=True)
    assert len(three) == 3 and isinstance(three[2], sfft.SFFTResult)
    np.testing.assert_allclose(three[1], noise)
    # Without err the noise is a constant estimated from the residuals.
    assert np.ptp(noise[ok]) == 0 and noise[ok][0] == pytest.approx(robust_std(diff[r.fit_mask]), rel=0.05)


def test_template_noise_without_science_noise(pair256):
    """err=None, template_err given: reweighting with a constant science variance."""
    p = pair256
    diff, noise, r = run_sfft(p.image, p.template, template_err=p.template_noise,
                              get_noise=True, get_kernel=True)
    assert r.n_iter >= 2 and abs(r.evaluate_flux_scale(128, 128) / 1.1 - 1) < 0.005
    q = normalised_residual(diff, noise, mask=r.dmask, exclude=source_mask(p))
    assert abs(q - 1) < 0.05


def test_scaled_is_zero_where_masked_or_in_dmask(pair256):
    p = pair256
    img, tpl = p.image.copy(), p.template.copy()
    img[50, 60] = np.nan
    tpl[120, 130] = np.nan
    m = np.zeros(img.shape, bool)
    m[10:20, 100:110] = True
    diff, scaled, noise, r = run_sfft(img, tpl, mask=m, err=p.image_noise,
                                      template_err=p.template_noise, get_scaled=True,
                                      get_noise=True, get_kernel=True)
    assert np.all(np.isfinite(diff)) and diff[50, 60] == 0
    assert np.all(scaled[m] == 0) and scaled[50, 60] == 0
    # The template NaN is grown by the 7x7 footprint, the edge band is 3 px wide.
    assert r.dmask[117:124, 127:134].all() and not r.dmask[116, 130] and not r.dmask[120, 126]
    assert r.dmask[:3].all() and r.dmask[:, -3:].all() and not r.dmask[3:-3, 3:-3][0:100, 0:100].any()
    assert np.all(scaled[r.dmask] == 0)
    assert np.count_nonzero(scaled) > 0.9 * scaled.size
    assert not r.fit_mask[m].any() and not r.fit_mask[r.dmask].any()


def test_noise_is_propagated_through_the_kernel(pair256):
    """noise^2 = err^2 + sum_a a_a(p)^2 sigma_R^2(p - d_a), checked by brute force."""
    p = pair256
    diff, noise, r = run_sfft(p.image, p.template, err=p.image_noise,
                              template_err=p.template_noise, get_noise=True, get_kernel=True)
    tv = p.template_noise ** 2
    for (y, x) in [(40, 50), (128, 128), (200, 17), (250, 250)]:
        k = r.evaluate_kernel_at(x, y)
        acc = 0.0
        for i in range(7):
            for j in range(7):
                yy, xx = y - (i - 3), x - (j - 3)
                if 0 <= yy < 256 and 0 <= xx < 256:
                    acc += k[i, j] ** 2 * tv[yy, xx]
        assert noise[y, x] ** 2 == pytest.approx(p.image_noise[y, x] ** 2 + acc, rel=1e-5)


def test_decorrelation_whitens_the_difference():
    """With a noisy template the difference noise is correlated; decorrelate=True whitens it."""
    p = simulate_pair(shape=(256, 256), seed=5, template_gain=0.25, template_readnoise=3.0,
                      template_sky=1000.0, n_stars=60)
    src = source_mask(p, grow=4)
    res = {}
    for dec in (False, True):
        diff, scaled, noise = run_sfft(p.image, p.template, err=p.image_noise,
                                       template_err=p.template_noise, get_scaled=True,
                                       get_noise=True, decorrelate=dec)
        z = np.where(src | (scaled == 0), np.nan, scaled)
        a, b = z[:, 1:], z[:, :-1]
        ok = np.isfinite(a) & np.isfinite(b)
        res[dec] = (np.corrcoef(a[ok], b[ok])[0, 1], robust_std(z))
    assert res[False][0] > 0.15                # correlated before
    assert abs(res[True][0]) < 0.05            # white after
    assert abs(res[True][1] - 1) < 0.05


def test_verbose_callable_and_cancel(pair256):
    p = pair256
    msgs = []
    run_sfft(p.image, p.template, max_iter=2, verbose=msgs.append)
    assert any("SFFT" in m for m in msgs)
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        run_sfft(p.image, p.template, cancel=cancel)
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        sfft.solve(p.image, p.template, cancel=ev.is_set)


# ---- clipping and object regions ---------------------------------------------------------
def test_sigma_clipping_removes_cosmic_rays(pair256):
    p = pair256
    rng = np.random.default_rng(2)
    img = p.image.copy()
    ys, xs = rng.integers(10, 246, 200), rng.integers(10, 246, 200)
    img[ys, xs] += 5000.0
    clean = sfft.solve(p.image, p.template, err=p.image_noise, sigma_clip=None, max_iter=1)
    hit = sfft.solve(img, p.template, err=p.image_noise, sigma_clip=None, max_iter=1)
    clipped = sfft.solve(img, p.template, err=p.image_noise)
    assert not clipped.fit_mask[ys, xs].any()
    assert clipped.n_clipped >= 200 and clipped.n_iter >= 2
    d_hit = np.abs(hit.kernel_sum_coeffs - clean.kernel_sum_coeffs).max()
    d_clip = np.abs(clipped.kernel_sum_coeffs - clean.kernel_sum_coeffs).max()
    assert d_clip < 0.1 * d_hit
    off = sfft.solve(img, p.template, err=p.image_noise, sigma_clip=3.0, max_iter=1)
    assert off.n_clipped == 0 and off.n_iter == 1


def test_object_regions_restrict_the_fit(pair256):
    p = pair256
    stars = p.stars[p.stars["template_flux"] > 3000]
    obj = {"x": np.asarray(stars["x"]), "y": np.asarray(stars["y"]),
           "flux": np.asarray(stars["image_flux"]), "fluxerr": np.sqrt(stars["image_flux"]),
           "flags": np.zeros(len(stars), int)}
    diff, noise, r = run_sfft(p.image, p.template, err=p.image_noise, obj=obj, obj_size=10,
                              get_noise=True, get_kernel=True)
    regions = sfft.object_regions(obj, p.image.shape, 10, n_params=300)
    assert regions is not None and not r.fit_mask[~regions].any()
    assert r.mode == "direct" and r.n_good < 0.5 * regions.size
    assert abs(r.evaluate_flux_scale(128, 128) / 1.1 - 1) < 0.01
    # Too few pixels in the boxes: the whole image is used.
    assert sfft.object_regions({"x": [100.0], "y": [100.0]}, (256, 256), 5, n_params=300) is None
    with pytest.raises(InputError):
        sfft.object_regions({"ra": [1.0]}, (256, 256))


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exc, text", [
    (dict(kernel_shape=(6, 7)), InputError, "odd"),
    (dict(kernel_shape=(301, 301)), InputError, "larger than the image"),
    (dict(flux_poly_order=3), InputError, "flux_poly_order"),
    (dict(max_iter=0), InputError, "max_iter"),
    (dict(kernel_poly_order=-1), InputError, "kernel_poly_order"),
    (dict(ridge=-1.0), InputError, "ridge"),
])
def test_bad_parameters(pair256, kw, exc, text):
    p = pair256
    with pytest.raises(exc, match=text):
        sfft.solve(p.image, p.template, **kw)


def test_bad_inputs(pair256):
    p = pair256
    with pytest.raises(InputError, match="same shape"):
        run_sfft(p.image, p.template[:100])
    with pytest.raises(InputError, match="no usable pixels"):
        # every interior pixel masked (the edge band is excluded anyway)
        m = np.zeros(p.image.shape, bool)
        m[3:-3, 3:-3] = True
        sfft.solve(p.image, p.template, mask=m)
    with pytest.raises(FitError, match="too few usable pixels"):
        m = np.ones(p.image.shape, bool)
        m[100:110, 100:110] = False
        sfft.solve(p.image, p.template, mask=m)
    with pytest.raises(FitError, match="no usable structure|singular|ill-conditioned"):
        sfft.solve(p.image, np.full(p.image.shape, 500.0))
    with pytest.raises(InputError, match="noise maps"):
        sfft.solve(p.image, p.template, err=True)


def test_ill_conditioned_system_is_an_error():
    """A template with structure in one row only cannot constrain a 2-D kernel."""
    rng = np.random.default_rng(0)
    tpl = np.zeros((64, 64))
    tpl[32] = rng.normal(0, 100, 64)
    img = tpl + rng.normal(0, 1, tpl.shape)
    with pytest.raises(FitError, match="singular|ill-conditioned"):
        sfft.solve(img, tpl, kernel_shape=(5, 5), kernel_poly_order=1, flux_poly_order=1,
                   ridge=0.0, flux_penalty=0.0)


# ---- real data ------------------------------------------------------------------------------
def _fits(path):
    from astropy.io import fits
    return np.asarray(fits.getdata(os.path.join(DATA, path)), dtype=np.float64)


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "decam-i-stacks")), reason="no data")
def test_decam_stacks_no_worse_than_published():
    sci = _fits("decam-i-stacks/Stack-DEC-OBS04.fits")
    ref = _fits("decam-i-stacks/Stack-DEC-OBS18.fits")
    pub = _fits("decam-i-stacks/FinalDifference.fits")
    diff, noise, r = run_sfft(sci, ref, err=True, template_err=True, image_gain=3.98,
                              template_gain=3.98, get_noise=True, get_kernel=True)
    excl = source_mask(sci, template=ref) | r.dmask
    excl[:10] = excl[-10:] = True
    excl[:, :10] = excl[:, -10:] = True
    assert robust_std(diff / noise, excl) <= robust_std(pub / noise, excl) + 0.01
    yy, xx = np.mgrid[0:256, 0:256]
    ap = (xx - 60) ** 2 + (yy - 181) ** 2 <= 36          # the bright source at (60, 181)
    ours = abs(diff[ap].sum() / sci[ap].sum())
    published = abs(pub[ap].sum() / sci[ap].sum())
    assert ours <= published


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "jwst-nircam-a2744")), reason="no data")
def test_jwst_crop_background_cleaner_than_published():
    """Decorrelated S/N map on a 400x400 crop around the bright star at (278, 642)."""
    sl = (slice(450, 850), slice(80, 480))
    sci, ref = _fits("jwst-nircam-a2744/science.fits")[sl], _fits("jwst-nircam-a2744/template.fits")[sl]
    en = _fits("jwst-nircam-a2744/science_noise.fits")[sl]
    tn = _fits("jwst-nircam-a2744/template_noise.fits")[sl]
    pub = _fits("jwst-nircam-a2744/published_sfft_decorrelated_snr.fits")[sl]
    diff, scaled = run_sfft(sci, ref, err=en, template_err=tn, decorrelate=True, get_scaled=True)
    ex = (pub == 0) | (scaled == 0) | source_mask(sci, template=ref)
    # Both normalisations are off (the mosaics' resampling correlates their noise);
    # ours is closer to 1 (measured 0.90 against 1.19).
    assert abs(robust_std(scaled, ex) - 1) < abs(robust_std(pub, ex) - 1)
    star = (slice(642 - 450 - 10, 642 - 450 + 11), slice(278 - 80 - 10, 278 - 80 + 11))
    # The star's residual is larger than the published one with the default 7x7
    # kernel (diffraction spikes at two roll angles; measured 5.8 against 3.7 mean
    # |S/N|); bound it so that regressions show.
    assert np.abs(scaled[star]).mean() < 2.0 * np.abs(pub[star]).mean()


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "jwst-nircam-a2744")), reason="no data")
def test_jwst_full_frame_no_worse_than_published():
    """Whole 900x900 frame, the recipe recorded in bench/README.md: uniform weights
    (as the SFFT authors fit), a 15x15 kernel for JWST's spiky PSF difference, no
    clipping; the outputs use the given noise maps. With run_sfft's defaults
    (inverse-variance weights, 7x7) the star is left at 51.8 / 10.4 (see README)."""
    sci, ref = _fits("jwst-nircam-a2744/science.fits"), _fits("jwst-nircam-a2744/template.fits")
    en = _fits("jwst-nircam-a2744/science_noise.fits")
    tn = _fits("jwst-nircam-a2744/template_noise.fits")
    pub = _fits("jwst-nircam-a2744/published_sfft_decorrelated_snr.fits")
    res = sfft.solve(sci, ref, kernel_shape=(15, 15), sigma_clip=None)
    bad = res.dmask | ~np.isfinite(sci)
    d, noise = sfft.decorrelate_difference(res, res.diff, en ** 2, tn ** 2, bad,
                                           float(np.median(en)), float(np.median(tn)))
    ok = ~bad & (noise > 0)
    scaled = np.zeros_like(d)
    np.divide(d, noise, out=scaled, where=ok)
    ex = (pub == 0) | ~ok
    ours_std, pub_std = robust_std(scaled, ex), robust_std(pub, pub == 0)
    assert abs(pub_std - 1.18) < 0.01
    assert ours_std <= pub_std and abs(ours_std - 1) <= abs(pub_std - 1)      # 0.950 vs 1.179
    star = (slice(632, 653), slice(268, 289))                # 21x21 around (278, 642)
    yy, xx = np.mgrid[0:900, 0:900]
    ap = (xx - 278) ** 2 + (yy - 642) ** 2 <= 64
    assert np.abs(scaled[star]).max() < np.abs(pub[star]).max()             # 15.8 vs 29.1
    assert np.abs(scaled[ap]).mean() < np.abs(pub[ap]).mean()                # 3.2 vs 6.1
    assert abs(res.evaluate_flux_scale(449.5, 449.5) - 1.0) < 0.01


def test_uniform_fit_weights_keep_noise_outputs():
    from diffgui.engine.simulation import simulate_pair
    from diffgui.engine.api import run_sfft
    p = simulate_pair(shape=(192, 192), n_stars=60, transients=0, seed=8)
    kw = dict(err=p.image_noise, template_err=p.template_noise, kernel_poly_order=0,
              bg_poly_order=1, flux_poly_order=0, get_noise=True, get_kernel=True)
    d1, n1, r1 = run_sfft(p.image, p.template, **kw)
    d2, n2, r2 = run_sfft(p.image, p.template, fit_weights="uniform", **kw)
    assert not np.allclose(r1.kernel_coeffs, r2.kernel_coeffs)
    # Both fit the same flux scale (truth 1.1) and both propagate the given noise maps.
    for r in (r1, r2):
        assert r.evaluate_flux_scale(96, 96, p.image.shape) == pytest.approx(1.1, rel=0.01)
    assert np.median(n2) == pytest.approx(np.median(n1), rel=0.02)
    with pytest.raises(ValueError, match="fit_weights"):
        run_sfft(p.image, p.template, fit_weights="cubic")
