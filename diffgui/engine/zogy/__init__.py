"""ZOGY proper image subtraction (Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27) on one image.

Notation follows the paper with the new image ``N`` (science) and the
reference ``R`` (template), both background-subtracted and on one pixel grid,
their PSFs ``P_N``, ``P_R`` (unit sum), background noise ``sigma_N``,
``sigma_R`` and flux scales ``F_n = 1`` and ``F_r`` (template flux over
science flux, stdpipe's convention). Hats are 2-D FFTs::

    den    = sqrt(sigma_N**2 F_r**2 |P_R|**2 + sigma_R**2 |P_N|**2)
    D_hat  = (F_r P_R N - P_N R) / den,     F_D = F_r / sqrt(sigma_N**2 F_r**2 + sigma_R**2)
    D      = ifft(D_hat) / F_D                           (science flux units)
    P_D    = F_r P_R P_N / (F_D den)                      (unit sum)
    S      = ifft(k_n N) - ifft(k_r R) = S_N - S_R,
    k_n    = F_r**2 conj(P_N) |P_R|**2 / den**2,  k_r = F_r conj(P_R) |P_N|**2 / den**2
    V_S    = err_N**2 (*) k_n**2 + err_R**2 (*) k_r**2   (per-pixel noise, sources included)
    V_ast  = dx**2 (d_x S_N)**2 + dy**2 (d_y S_N)**2 + (same for S_R)
    S_corr = S / sqrt(V_S + V_ast)
    F_S    = sum_k F_r**2 |P_N|**2 |P_R|**2 / den**2 / (H W)
    Fpsf   = S / F_S,   Fpsf_err = sqrt(V_S) / F_S

Implementation choices (and the stdpipe defects they avoid):

- PSFs are embedded with their centre at index 0 for *any* array parity
  (:func:`diffgui.engine.common.fft.kernel_to_origin`), so odd sizes shift nothing.
- ``F_S`` divides by ``H * W`` (the number of pixels), not ``W * W``.
- The image is mirrored into a margin and padded to an FFT-friendly size, so
  the circular FFT never wraps one edge onto the other.
- Bad pixels (masked or non-finite) are set to 0 (the background) and their
  noise is inflated to the largest signal in the image: no ringing leaks out,
  and ``S_corr`` around them is suppressed rather than spiking. In the outputs
  ``D``, ``S_corr`` and ``Fpsf`` are 0 at bad pixels (``Fpsf_err`` keeps its
  inflated value, so ``Fpsf / Fpsf_err`` is 0 there too).
- Real FFTs (half spectra) throughout, each transform computed once; the
  compact kernels of S and of the noise of D are built on a small grid.
- Gradients of the astrometric term are central differences (stdpipe's
  backward differences are offset by half a pixel).
- The flux scale and sub-pixel shift minimise ``sum(D**2)`` over the fit
  region with an errors-in-variables normalisation, two FFTs per pass and
  usually one or two passes (:func:`_fit_scale_shift`).
- Optionally (``corr_n``/``corr_r``, run_zogy's ``noise_correlation``) the
  images and PSFs are whitened for correlated pixel noise (resampled images).

``S_corr`` saturates for bright sources: the astrometric variance grows as the
square of the flux, so ``S_corr`` tends to a flux-independent limit set by
``dx``, ``dy``. ``Fpsf / Fpsf_err`` keeps growing and is the detection
statistic for bright transients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from diffgui.engine.common import fft
from diffgui.engine.errors import FitError, InputError, check_cancel, make_logger

__all__ = ["ZogyResult", "zogy_subtract", "estimate_noise_correlation", "prepare_psf", "prepare_corr",
           "subpixel_peak", "fit_margin", "catalogue_scale", "run", "ZOGY_OPTIONS"]


@dataclass
class ZogyResult:
    """Outputs of :func:`zogy_subtract` (arrays have the input image's shape).

    Attributes
    ----------
    D : ndarray
        Difference image in science flux units.
    S_corr : ndarray
        Score image normalised by its noise (source, background and
        astrometric terms).
    scale : float
        ``F_r`` used (template flux / science flux).
    shift : tuple
        ``(dx, dy)`` template-minus-science offset applied to the template.
    F_S, F_D : float
        Normalisations of S and D.
    sigma_n, sigma_r : float
        Background noise of science and template used in the equations.
    P_D, S, Fpsf, Fpsf_err, D_err : ndarray or None
        PSF of D (cropped around its centre), the score image, PSF photometry
        and its error, and the noise map of D, when requested.
    fit : dict
        What the scale/shift fit did (iterations, errors, fallbacks).
    """

    D: np.ndarray
    S_corr: np.ndarray
    scale: float
    shift: tuple
    F_S: float
    F_D: float
    sigma_n: float
    sigma_r: float
    P_D: Optional[np.ndarray] = None
    S: Optional[np.ndarray] = None
    Fpsf: Optional[np.ndarray] = None
    Fpsf_err: Optional[np.ndarray] = None
    D_err: Optional[np.ndarray] = None
    fit: dict = field(default_factory=dict)


def prepare_psf(stamp, name="psf", clean=0.0) -> np.ndarray:
    """Validate a PSF stamp: finite, odd-sized, positive sum; optional cleaning
    (pixels below ``clean * max`` set to 0); normalised to unit sum."""
    p = np.array(stamp, dtype=np.float64)
    if p.ndim != 2:
        raise InputError(f"{name} must be a 2-D stamp, got shape {p.shape}.")
    if p.shape[0] % 2 == 0 or p.shape[1] % 2 == 0:
        raise InputError(f"{name} stamp must have odd sizes, got {p.shape}.")
    if not np.isfinite(p).all():
        raise InputError(f"{name} has non-finite values.")
    if clean:
        clean = float(clean)
        if not 0 <= clean < 1:
            raise InputError(f"psf_clean must be in [0, 1), got {clean}.")
        p[p < clean * p.max()] = 0.0
    s = p.sum()
    if not np.isfinite(s) or s <= 0:
        raise InputError(f"{name} has no positive flux.")
    return p / s


def fit_margin(psf_n, psf_r) -> int:
    """Mirror margin (pixels) for a pair of PSF stamps: the reach of ZOGY's kernels."""
    half = max(psf_n.shape[0], psf_n.shape[1], psf_r.shape[0], psf_r.shape[1]) // 2
    return int(max(8, 2 * half))


def _rfft_weights(shape):
    """Multiplicity of each rfft column in the full spectrum (1 or 2)."""
    w = shape[1]
    wts = np.full(w // 2 + 1, 2.0)
    wts[0] = 1.0
    if w % 2 == 0:
        wts[-1] = 1.0
    return wts


def _freqs(shape):
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return fy, fx


def _shift_phase(shape, sx, sy):
    """Fourier factor that moves a template feature at (x + sx, y + sy) to (x, y)."""
    fy, fx = _freqs(shape)
    return np.exp(2j * np.pi * fy * sy) * np.exp(2j * np.pi * fx * sx)


def _pad(a, m, shape, fill_value=None):
    """Mirror ``a`` into a margin ``m`` and pad to ``shape`` (extra on the far side)."""
    h, w = a.shape
    ph, pw = shape
    if fill_value is not None:
        out = np.full(shape, fill_value, dtype=np.float64)
        out[m:m + h, m:m + w] = a
        return out
    out = np.pad(a, ((m, ph - h - m), (m, pw - w - m)), mode="symmetric")
    return out


def _gradients_sq(a, dx, dy, out, m):
    """Add ``dx**2 (d_x a)**2 + dy**2 (d_y a)**2`` over the interior ``out.shape`` of the
    padded ``a`` (offset ``m``, central differences; the margin gives the neighbours)."""
    h, w = out.shape
    g = a[m:m + h, m + 1:m + w + 1] - a[m:m + h, m - 1:m + w - 1]
    g *= 0.5 * dx
    np.square(g, out=g)
    out += g
    np.subtract(a[m + 1:m + h + 1, m:m + w], a[m - 1:m + h - 1, m:m + w], out=g)
    g *= 0.5 * dy
    np.square(g, out=g)
    out += g


def estimate_noise_correlation(image, err=None, bad=None, radius=2, max_pixels=2_000_000,
                               min_significance=0.02, highpass=15):
    """Correlation of the pixel noise of ``image`` at lags up to ``radius`` pixels.

    Resampled (drizzled, interpolated) images have correlated noise, which
    ZOGY's white-noise equations underestimate: ``S_corr`` then comes out too
    wide (1.6 instead of 1 on the JWST pair). For each lag ``d`` the
    correlation of ``z = image / err`` is estimated robustly (so sources do
    not dominate) from the MADs of ``z(x) + z(x + d)`` and ``z(x) - z(x + d)``.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image.
    err : ndarray, optional
        Its noise map (default: constant).
    bad : ndarray of bool, optional
        Pixels to ignore.
    radius : int
        Largest lag.
    max_pixels : int
        Larger images are measured on a central crop of this many pixels.
    min_significance : float
        If no lag's correlation exceeds this, None is returned (white noise).
    highpass : int
        Box size (pixels) of the local mean removed first.

    Returns
    -------
    ndarray or None
        ``(2 radius + 1)`` square kernel with 1 at the centre, symmetric, or
        None for white noise.
    """
    from scipy import ndimage

    z = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(z)
    if bad is not None:
        ok &= ~np.asarray(bad, dtype=bool)
    h, w = z.shape
    r = int(radius)
    if h * w > max_pixels:
        # A central crop is enough for a handful of correlation coefficients.
        side = int(np.sqrt(max_pixels))
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        sl = (slice(y0, y0 + side), slice(x0, x0 + side))
        z, ok = z[sl], ok[sl]
        err = None if err is None else np.asarray(err)[sl]
        h, w = z.shape
    if err is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = z / np.asarray(err, dtype=np.float64)
        ok &= np.isfinite(z)
    z = np.where(ok, z, 0.0)
    # High-pass: structure larger than a few pixels (galaxies, background
    # residuals) is not pixel noise and would read as a long-range correlation.
    cnt = ndimage.uniform_filter(ok.astype(float), highpass)
    z = z - np.where(cnt > 0, ndimage.uniform_filter(z, highpass) / np.maximum(cnt, 1e-12), 0.0)
    # Sources: wherever a smoothed (matched-filter-like) image stands out of
    # its own noise, both signs so that the noise itself is cut symmetrically.
    zs = ndimage.gaussian_filter(z, 1.5)
    v = zs[ok]
    s_s = 1.4826 * float(np.median(np.abs(v - np.median(v)))) if v.size else 0.0
    if s_s > 0:
        src = ndimage.binary_dilation(np.abs(zs) > 2.5 * s_s, iterations=3)
        ok &= ~src
    c = np.zeros((2 * r + 1, 2 * r + 1))
    c[r, r] = 1.0
    for dy in range(0, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx <= 0:
                continue
            ys = slice(0, h - dy)
            xa = slice(max(0, -dx), w - max(0, dx))
            xb = slice(max(0, dx), w - max(0, -dx))
            a_, b_ = z[ys, xa], z[dy:, xb]
            m = ok[ys, xa] & ok[dy:, xb]
            if m.sum() < 1000:
                continue
            av, bv = a_[m], b_[m]
            if av.size > 250_000:
                k = av.size // 250_000 + 1
                av, bv = av[::k], bv[::k]
            # z is zero-mean after the high-pass: uncentred MADs suffice.
            vp = np.median(np.abs(av + bv)) ** 2
            vm = np.median(np.abs(av - bv)) ** 2
            rho = (vp - vm) / (vp + vm) if vp + vm > 0 else 0.0
            c[r + dy, r + dx] = c[r - dy, r - dx] = rho
    off = c.copy()
    off[r, r] = 0.0
    if np.abs(off).max() < min_significance:
        return None
    return c


def prepare_corr(c):
    """Validate a noise-correlation kernel: odd square, finite, centre 1."""
    c = np.array(c, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] % 2 == 0 or c.shape[1] % 2 == 0 or not np.isfinite(c).all():
        raise ValueError("a noise-correlation kernel must be a finite 2-D array with odd sizes")
    ctr = c[c.shape[0] // 2, c.shape[1] // 2]
    if ctr <= 0:
        raise ValueError("the centre of a noise-correlation kernel must be positive")
    return c / ctr


def _whitening(corr, pshape):
    """1 / sqrt(noise power spectrum) on the rfft grid of ``pshape``, mean power 1."""
    psd = fft.rfft2(fft.kernel_to_origin(corr, pshape)).real
    psd = np.maximum(psd, 0.05 * psd.max())
    return 1.0 / np.sqrt(psd)


def zogy_subtract(N, R, psf_n, psf_r, err_n=None, err_r=None, mask_n=None, mask_r=None, *,
                  sigma_n=None, sigma_r=None, scale=1.0, shift=(0.0, 0.0), fit_scale=False,
                  fit_shift=False, fit_mask=None, dx=0.25, dy=0.25, margin=None, get_psf=False,
                  get_S=False, get_Fpsf=False, get_noise=False, corr_n=None, corr_r=None,
                  max_iter=10, nthreads=0, cancel=None, verbose=False) -> ZogyResult:
    """ZOGY subtraction of background-subtracted ``R`` from ``N`` with given PSFs.

    Parameters
    ----------
    N, R : ndarray
        Science and template, background-subtracted, same shape. Non-finite
        pixels are treated as bad. Not modified.
    psf_n, psf_r : ndarray
        Centred, odd-sized PSF stamps (normalised here).
    err_n, err_r : ndarray, optional
        Per-pixel noise (sigma) including the sources' Poisson noise. Default:
        constant ``sigma_n``/``sigma_r``. Not modified.
    mask_n, mask_r : ndarray of bool, optional
        Bad pixels (True): replaced by 0, their noise inflated, 0 in outputs.
    sigma_n, sigma_r : float, optional
        Background noise; default the median of ``err`` over good pixels, or a
        robust standard deviation of the image.
    scale : float
        ``F_r`` (template flux / science flux), or the starting value of the fit.
    shift : (float, float)
        Template-minus-science offset ``(dx, dy)`` in pixels (or the start of
        the fit); the template is moved back by it in Fourier space.
    fit_scale, fit_shift : bool
        Fit ``F_r`` and/or the shift by least squares on ``D`` over ``fit_mask``.
    fit_mask : ndarray of bool, optional
        Pixels used by the fit (default: all good pixels).
    dx, dy : float
        Astrometric noise (sigma, pixels) of the astrometric variance term.
    margin : int, optional
        Mirror margin; default twice the larger PSF half-size.
    get_psf, get_S, get_Fpsf, get_noise : bool
        Also compute P_D, S, Fpsf/Fpsf_err and the noise map of D.
    corr_n, corr_r : ndarray, optional
        Noise correlation kernels (see :func:`estimate_noise_correlation`):
        the images and their PSFs are whitened first (ZOGY with a
        non-white noise spectrum), so ``D`` is decorrelated and ``S_corr`` has
        the right width on resampled images.
    max_iter : int
        Most Gauss-Newton iterations of the fit.
    nthreads : int
        FFT threads (0: all cores).
    cancel : callable, optional
        Raises :class:`~diffgui.engine.errors.Cancelled` when it returns True.
    verbose : bool or callable
        Logging.

    Returns
    -------
    ZogyResult
    """
    log = make_logger(verbose)
    N = np.asarray(N, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    if N.ndim != 2 or N.shape != R.shape:
        raise InputError(f"image and template must be 2-D with one shape, got {N.shape} and {R.shape}.")
    h, w = N.shape
    Pn = prepare_psf(psf_n, "image PSF")
    Pr = prepare_psf(psf_r, "template PSF")
    for nm, p in (("image", Pn), ("template", Pr)):
        if p.shape[0] > h or p.shape[1] > w:
            raise InputError(
                f"the {nm} PSF stamp {p.shape} is larger than the image/tile {N.shape}: "
                "use a smaller PSF stamp or fewer tiles."
            )
    bad_n = ~np.isfinite(N)
    bad_r = ~np.isfinite(R)
    if mask_n is not None:
        bad_n |= np.asarray(mask_n, dtype=bool)
    if mask_r is not None:
        bad_r |= np.asarray(mask_r, dtype=bool)
    for e, b in ((err_n, bad_n), (err_r, bad_r)):
        if e is not None:
            e = np.asarray(e)
            b |= ~(np.isfinite(e) & (e > 0))
    bad = bad_n | bad_r
    if bad.all():
        raise InputError("every pixel is masked in the science image or the template (or both).")

    def sigma_of(img, err, b, given, name):
        if given is not None:
            s = float(given)
        elif err is not None:
            s = float(np.median(np.asarray(err)[~b]))
        else:
            v = img[~b]
            s = 1.4826 * float(np.median(np.abs(v - np.median(v))))
        if not np.isfinite(s) or s <= 0:
            raise InputError(f"the {name} noise level must be positive and finite, got {s}.")
        return s

    sig_n = sigma_of(N, err_n, bad_n, sigma_n, "science")
    sig_r = sigma_of(R, err_r, bad_r, sigma_r, "template")
    F = float(scale)
    if not np.isfinite(F) or F <= 0:
        raise InputError(f"scale (F_r) must be positive, got {scale!r}.")
    sx, sy = (float(v) for v in shift)

    m = fit_margin(Pn, Pr) if margin is None else max(1, int(margin))
    pshape = fft.padded_shape((h, w), (2 * m, 2 * m))
    nt = nthreads

    # ---- inputs: bad pixels -> 0 (background), their noise inflated ----------
    def filled(img, b):
        return np.where(b, 0.0, img) if b.any() else img

    Nf = filled(N, bad_n)
    Rf = filled(R, bad_r)
    vmax = max(float(np.abs(Nf).max()), float(np.abs(Rf).max()) / F)

    def var_map(err, b, s, vbad):
        """A callable giving the padded variance map on demand (None: constant s**2)."""
        if err is None and not b.any():
            return None

        def padded():
            e = np.full((h, w), s) if err is None else np.asarray(err, dtype=np.float64)
            if b.any():
                e = np.where(b, np.sqrt(vbad), e)
            # The margin holds mirrored noise, like the image there.
            v = _pad(e, m, pshape)
            return np.square(v, out=v)

        return padded


    Nh = fft.rfft2(_pad(Nf, m, pshape), nt)
    Rh = fft.rfft2(_pad(Rf, m, pshape), nt)
    del Nf, Rf
    Pnh = fft.rfft2(fft.kernel_to_origin(Pn, pshape), nt)
    Prh = fft.rfft2(fft.kernel_to_origin(Pr, pshape), nt)
    for corr, Ih, Ph in ((corr_n, Nh, Pnh), (corr_r, Rh, Prh)):
        if corr is not None:
            wht = _whitening(corr, pshape)
            Ih *= wht
            Ph *= wht
            del wht
    an2 = np.abs(Pnh) ** 2
    ar2 = np.abs(Prh) ** 2
    check_cancel(cancel)

    # ---- flux scale and shift -----------------------------------------------
    fitinfo = {"fit_scale": bool(fit_scale), "fit_shift": bool(fit_shift)}
    if fit_scale or fit_shift:
        near_bad = bad
        if bad.any():
            # D near a bad pixel sees its zero fill: keep those pixels out of the fit.
            from scipy import ndimage

            r = max(Pn.shape + Pr.shape) // 2
            near_bad = ndimage.maximum_filter(bad.view(np.uint8), size=2 * r + 1).astype(bool)
        fm = ~near_bad if fit_mask is None else (np.asarray(fit_mask, dtype=bool) & ~near_bad)
        F, sx, sy, fitinfo = _fit_scale_shift(Nh, Rh, Pnh, Prh, an2, ar2, sig_n, sig_r, F, sx, sy,
                                              fm, m, pshape, bool(fit_scale), bool(fit_shift),
                                              int(max_iter), nt, cancel, log)
    if sx or sy:
        Rh *= _shift_phase(pshape, sx, sy)
    check_cancel(cancel)

    # ---- D, P_D ------------------------------------------------------------------
    den2 = (sig_n * sig_n * F * F) * ar2
    den2 += (sig_r * sig_r) * an2
    tiny = np.finfo(float).tiny
    g2 = np.where(den2 > tiny, 1.0 / np.maximum(den2, tiny), 0.0)
    del den2
    g = np.sqrt(g2)
    F_D = F / np.sqrt(sig_n * sig_n * F * F + sig_r * sig_r)
    wts = _rfft_weights(pshape)
    npix = float(pshape[0] * pshape[1])
    F_S = float(np.sum((F * F * an2 * ar2 * g2) * wts[None, :]) / npix)

    crop = (slice(m, m + h), slice(m, m + w))
    Dh = Prh * Nh
    Dh *= F
    tmp = Pnh * Rh
    Dh -= tmp
    del tmp
    Dh *= g
    D = fft.irfft2(Dh, pshape, nt)[crop]
    D *= 1.0 / F_D
    del Dh
    P_D = None
    if get_psf:
        pdh = Prh * Pnh
        pdh *= g * (F / F_D)
        pd = fft.irfft2(pdh, pshape, nt)
        hy = max(Pn.shape[0], Pr.shape[0]) // 2
        hx = max(Pn.shape[1], Pr.shape[1]) // 2
        P_D = pd[np.ix_(np.arange(-hy, hy + 1) % pshape[0], np.arange(-hx, hx + 1) % pshape[1])]
        P_D = P_D / P_D.sum()
    var_n = var_map(err_n, bad_n, sig_n, max(vmax, sig_n) ** 2)
    var_r = var_map(err_r, bad_r, sig_r, max(vmax * F, sig_r) ** 2)
    # Kernels of S (and D's noise) are compact: compute them on a small grid,
    # square them there, and transform only the squares to the full grid.
    small = _SmallGrid(Pn, Pr, F, sig_n, sig_r, corr_n, corr_r, pshape, nt)
    D_err = None
    if get_noise:
        kd_n, kd_r = small.d_kernels(F_D)
        vd = _variance_map([(var_n, sig_n, kd_n), (var_r, sig_r, kd_r)], m, pshape, nt)
        D_err = np.sqrt(np.maximum(np.broadcast_to(vd, pshape)[crop], 0.0))
    check_cancel(cancel)

    # ---- S, its variance -------------------------------------------------------------
    kn_h = np.conj(Pnh)
    kn_h *= ar2 * g2 * (F * F)
    S_N = fft.irfft2(kn_h * Nh, pshape, nt)
    del kn_h, Nh
    kr_h = np.conj(Prh)
    kr_h *= an2 * g2 * F
    S_R = fft.irfft2(kr_h * Rh, pshape, nt)
    del kr_h, Rh, g2, g, an2, ar2, Pnh, Prh
    kn, kr = small.s_kernels()
    V_S = _variance_map([(var_n, sig_n, kn), (var_r, sig_r, kr)], m, pshape, nt)
    check_cancel(cancel)
    V_S = np.broadcast_to(V_S, pshape)[crop] if np.ndim(V_S) else np.full((h, w), float(V_S))
    V_S = np.maximum(V_S, tiny)
    tot = V_S.copy()
    if dx or dy:
        _gradients_sq(S_N, float(dx), float(dy), tot, m)
        _gradients_sq(S_R, float(dx), float(dy), tot, m)
    S = S_N[crop]
    S -= S_R[crop]
    del S_N, S_R
    np.sqrt(tot, out=tot)
    S_corr = S / tot
    del tot
    Fpsf = Fpsf_err = None
    if get_Fpsf:
        Fpsf = S / F_S
        Fpsf_err = np.sqrt(V_S) / F_S
        Fpsf[bad] = 0.0
    D[bad] = 0.0
    S_corr[bad] = 0.0
    if get_S:
        S[bad] = 0.0
    log(f"ZOGY: F_r={F:.5f} shift=({sx:+.3f}, {sy:+.3f}) sigma_N={sig_n:.4g} sigma_R={sig_r:.4g} "
        f"F_D={F_D:.4g} F_S={F_S:.4g}")
    return ZogyResult(D=D, S_corr=S_corr, scale=F, shift=(sx, sy), F_S=F_S, F_D=float(F_D),
                      sigma_n=sig_n, sigma_r=sig_r, P_D=P_D, S=S if get_S else None, Fpsf=Fpsf,
                      Fpsf_err=Fpsf_err, D_err=D_err, fit=fitinfo)


class _SmallGrid:
    """ZOGY's kernels on a small FFT grid (they are compact: a few PSF sizes)."""

    def __init__(self, Pn, Pr, F, sig_n, sig_r, corr_n, corr_r, pshape, nt):
        n = 4 * max(Pn.shape + Pr.shape)
        self.shape = tuple(min(p, fft.next_fast_size(n)) for p in pshape)
        self.pshape = pshape
        self.nt = nt
        self.F = F
        pn = fft.rfft2(fft.kernel_to_origin(Pn, self.shape), nt)
        pr = fft.rfft2(fft.kernel_to_origin(Pr, self.shape), nt)
        for corr, ph in ((corr_n, pn), (corr_r, pr)):
            if corr is not None:
                ph *= _whitening(corr, self.shape)
        self.pn, self.pr = pn, pr
        self.an2, self.ar2 = np.abs(pn) ** 2, np.abs(pr) ** 2
        den2 = (sig_n * sig_n * F * F) * self.ar2 + (sig_r * sig_r) * self.an2
        tiny = np.finfo(float).tiny
        self.g2 = np.where(den2 > tiny, 1.0 / np.maximum(den2, tiny), 0.0)

    def _real(self, k_h):
        return fft.irfft2(k_h, self.shape, self.nt)

    def s_kernels(self):
        F = self.F
        kn = self._real(np.conj(self.pn) * (self.ar2 * self.g2 * (F * F)))
        kr = self._real(np.conj(self.pr) * (self.an2 * self.g2 * F))
        return kn, kr

    def d_kernels(self, F_D):
        g = np.sqrt(self.g2)
        return self._real(self.pr * g * (self.F / F_D)), self._real(self.pn * g * (1.0 / F_D))


def _variance_map(terms, m, pshape, nt):
    """Sum over ``(var, sigma, kernel)`` of ``var (*) kernel**2``.

    Kernels are small-grid real kernels (origin at index 0). ``var`` is a
    callable returning the padded variance map, or None for the constant
    ``sigma**2`` (adds a scalar). Returns a scalar or a full-grid array.
    """
    scalar = 0.0
    acc = None
    for var, sigma, k in terms:
        if var is None:
            scalar += sigma * sigma * float(np.sum(k * k))
            continue
        kc = np.fft.fftshift(np.square(k))
        if kc.shape[0] % 2 == 0:
            kc = kc[1:]
        if kc.shape[1] % 2 == 0:
            kc = kc[:, 1:]
        K = fft.rfft2(fft.kernel_to_origin(kc, pshape), nt)
        V = fft.rfft2(var(), nt)
        V *= K
        del K
        if acc is None:
            acc = V
        else:
            acc += V
        del V
    if acc is None:
        return scalar
    out = fft.irfft2(acc, pshape, nt)
    if scalar:
        out += scalar
    return out


def _fit_scale_shift(Nh, Rh, Pnh, Prh, an2, ar2, sig_n, sig_r, F, sx, sy, fit_mask, m, pshape,
                     do_scale, do_shift, max_iter, nt, cancel, log):
    """Fit F_r and the template shift by minimising ``sum(D_u**2)`` over ``fit_mask``.

    With ``T_s = ifft(P_R N g)`` and ``T_t = ifft(P_N R e(s) g)`` for a fixed
    ``g = 1 / den(F0)``, ``D_u = F T_s - T_t`` and a small extra shift is
    ``T_t(x + ds) ~ T_t + ds . grad T_t``. The noise of ``F T_s - T_t`` has
    the variance ``F**2 v_s + v_t`` per pixel (Parseval), so the objective

        sum((F T_s - T_t - ds . grad T_t)**2) / (F**2 v_s + v_t)

    is an errors-in-variables (total least squares) criterion: unbiased by
    the noise of either image. Its minimum over the shift is linear, over F a
    closed-form scalar function of a few dot products. Each pass costs two
    FFTs; another pass (with ``g`` and the shift updated) follows only when
    the shift moved by more than 0.02 px.
    """
    h, w = fit_mask.shape
    npar = int(do_scale) + 2 * int(do_shift)
    n_fit = int(np.count_nonzero(fit_mask))
    if n_fit <= 10 + npar:
        raise FitError(
            f"only {n_fit} usable pixels for the flux-scale/shift fit: pass scale= and "
            "fit_scale=False/fit_shift=False, or give good_regions covering unmasked stars."
        )
    from scipy.optimize import minimize_scalar

    sel = None if fit_mask.all() else fit_mask
    xs = slice(m, m + w)
    wts = _rfft_weights(pshape)[None, :]
    npix = float(pshape[0] * pshape[1])
    tiny = np.finfo(float).tiny
    s2n, s2r = sig_n * sig_n, sig_r * sig_r
    info = {"fit_scale": do_scale, "fit_shift": do_shift, "iterations": 0, "converged": False}
    F0, sx0, sy0 = F, sx, sy
    errs = {}
    for it in range(max(1, min(int(max_iter), 5))):
        check_cancel(cancel)
        g = 1.0 / np.sqrt(np.maximum((s2n * F * F) * ar2 + s2r * an2, tiny))
        v_s = s2n * float(np.sum(ar2 * g * g * wts) / npix)
        v_t = s2r * float(np.sum(an2 * g * g * wts) / npix)
        tmp = Prh * Nh
        tmp *= g
        Ts = fft.irfft2(tmp, pshape, nt)
        np.multiply(Pnh, Rh, out=tmp)
        tmp *= g
        del g
        if sx or sy:
            tmp *= _shift_phase(pshape, sx, sy)
        Tt = fft.irfft2(tmp, pshape, nt)
        del tmp
        # Dot products over the fit pixels, a block of rows at a time (no
        # image-sized temporaries).
        a = b = c = 0.0
        u = np.zeros(2)
        wv = np.zeros(2)
        M = np.zeros((2, 2))
        step_rows = max(1, 1_000_000 // max(w, 1))
        for r0 in range(0, h, step_rows):
            r1 = min(h, r0 + step_rows)
            rs = slice(m + r0, m + r1)
            msk = None if sel is None else sel[r0:r1]

            def blk(arr):
                return arr.ravel() if msk is None else arr[msk]

            ts = blk(Ts[rs, xs])
            tt = blk(Tt[rs, xs])
            a += float(ts @ ts)
            b += float(ts @ tt)
            c += float(tt @ tt)
            if do_shift:
                # central differences; the margin provides the neighbours
                gx = blk(Tt[rs, m + 1:m + w + 1] - Tt[rs, m - 1:m + w - 1]) * 0.5
                gy = blk(Tt[m + r0 + 1:m + r1 + 1, xs] - Tt[m + r0 - 1:m + r1 - 1, xs]) * 0.5
                M += [[gx @ gx, gx @ gy], [gx @ gy, gy @ gy]]
                u += [gx @ ts, gy @ ts]
                wv += [gx @ tt, gy @ tt]
        del Ts, Tt
        if do_shift:
            try:
                Minv = np.linalg.inv(M)
            except np.linalg.LinAlgError:
                raise FitError("the shift fit is singular: no structure in the fit region.") from None

        def shift_of(Fv):
            return Minv @ (Fv * u - wv) if do_shift else np.zeros(2)

        def phi(Fv):
            num = Fv * Fv * a - 2 * Fv * b + c
            if do_shift:
                q = Fv * u - wv
                num -= float(q @ Minv @ q)
            return num / (Fv * Fv * v_s + v_t)

        if do_scale:
            if a <= 0:
                raise FitError("the flux-scale fit has no signal in the fit region.")
            res = minimize_scalar(phi, bounds=(0.2 * F, 5.0 * F), method="bounded",
                                  options={"xatol": 1e-7 * F})
            F_new = float(res.x)
        else:
            F_new = F
        ds = shift_of(F_new)
        # Formal errors from the curvature of the objective (chi2 per pixel ~ 1).
        dof_chi2 = max(phi(F_new) / max(n_fit - npar, 1), 1e-300)
        if do_scale:
            hF = 1e-4 * F_new
            curv = (phi(F_new + hF) - 2 * phi(F_new) + phi(F_new - hF)) / hF ** 2
            errs["scale"] = float(np.sqrt(2 * dof_chi2 / curv)) if curv > 0 else np.inf
        if do_shift:
            cov = Minv * (F_new * F_new * v_s + v_t) * dof_chi2
            errs["shift"] = tuple(float(v) for v in np.sqrt(np.maximum(np.diag(cov), 0)))
        step_f = F_new - F
        F = F_new
        if do_shift:
            sx = float(np.clip(sx + ds[0], -0.5, 0.5))
            sy = float(np.clip(sy + ds[1], -0.5, 0.5))
        info["iterations"] = it + 1
        # The scale of each pass is unbiased whatever g was; only the linearised
        # shift needs another pass when it moved by more than a small amount.
        del step_f
        if not do_shift or max(abs(ds[0]), abs(ds[1])) < 0.02:
            info["converged"] = True
            break
    if do_scale:
        info["scale_err"] = errs.get("scale", np.inf)
        if not np.isfinite(F) or not info["scale_err"] < 0.1 * F:
            log(f"ZOGY: flux scale poorly constrained ({F:.4f} +- {info['scale_err']:.4f}); keeping {F0:.4f}")
            info["scale_fallback"] = True
            F = F0
    if do_shift:
        info["shift_err"] = errs.get("shift", (np.inf, np.inf))
        if not max(info["shift_err"]) < 0.1:
            log(f"ZOGY: shift poorly constrained (+-{max(info['shift_err']):.3f} px); keeping "
                f"({sx0:+.3f}, {sy0:+.3f})")
            info["shift_fallback"] = True
            sx, sy = sx0, sy0
    log(f"ZOGY: fit after {info['iterations']} passes: F_r={F:.5f} shift=({sx:+.4f}, {sy:+.4f})")
    info.update(scale=F, shift=(sx, sy))
    return F, sx, sy, info


def subpixel_peak(image, x, y, radius=2):
    """Value and position of the local maximum of ``image`` near ``(x, y)``,
    refined by a quadratic fit to the 3x3 pixels around the brightest pixel.

    Returns ``(value, x_peak, y_peak)``; use it to read ``Fpsf`` of a source
    that is not centred on a pixel (the nearest pixel reads ~5 % low).
    """
    a = np.asarray(image, dtype=np.float64)
    ix, iy = int(round(x)), int(round(y))
    r = int(radius)
    y0, y1 = max(1, iy - r), min(a.shape[0] - 1, iy + r + 1)
    x0, x1 = max(1, ix - r), min(a.shape[1] - 1, ix + r + 1)
    sub = a[y0:y1, x0:x1]
    j, i = np.unravel_index(np.argmax(sub), sub.shape)
    py, px = y0 + j, x0 + i
    z = a[py - 1:py + 2, px - 1:px + 2]
    # z = c + bx x + by y + axx x^2 + ayy y^2 + axy x y on the 3x3 grid
    gx = (z[1, 2] - z[1, 0]) / 2.0
    gy = (z[2, 1] - z[0, 1]) / 2.0
    hxx = z[1, 2] - 2 * z[1, 1] + z[1, 0]
    hyy = z[2, 1] - 2 * z[1, 1] + z[0, 1]
    hxy = (z[2, 2] - z[2, 0] - z[0, 2] + z[0, 0]) / 4.0
    H = np.array([[hxx, hxy], [hxy, hyy]])
    det = np.linalg.det(H)
    if det <= 0 or hxx >= 0:
        return float(z[1, 1]), float(px), float(py)
    off = -np.linalg.solve(H, [gx, gy])
    off = np.clip(off, -1.0, 1.0)
    val = (z[1, 1] + gx * off[0] + gy * off[1] + 0.5 * (hxx * off[0] ** 2 + hyy * off[1] ** 2)
           + hxy * off[0] * off[1])
    return float(val), float(px + off[0]), float(py + off[1])


# ---------------------------------------------------------------------------------------
# run_zogy orchestration
# ---------------------------------------------------------------------------------------
#: Object flags that disqualify a star from the flux-scale match (deblended,
#: saturated, truncated at the edge, masked pixels in the footprint).
_BAD_MATCH_FLAGS = 0x2 | 0x4 | 0x8 | 0x100


def _positive_float(name, value, allow_zero=True):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}.")
    return v


#: ZOGY options (not PSF estimation ones) accepted through run_zogy's ``**kwargs``.
ZOGY_OPTIONS = ("noise_correlation",)


def _split_kwargs(kwargs, log):
    from diffgui.engine.psf import ESTIMATE_OPTIONS, IGNORED_PSFEX_OPTIONS

    est = {}
    for k, v in kwargs.items():
        if k in ZOGY_OPTIONS:
            continue
        if k in ESTIMATE_OPTIONS:
            est[k] = v
        elif k in IGNORED_PSFEX_OPTIONS:
            log(f"ZOGY: option {k!r} is for the PSFEx/SExtractor programs and is ignored here")
        else:
            raise InputError(
                f"unknown option {k!r} for run_zogy; PSF estimation accepts {list(ESTIMATE_OPTIONS)}, "
                f"ZOGY itself {list(ZOGY_OPTIONS)}."
            )
    return est


def catalogue_scale(image_obj, template_obj, radius, log=None):
    """Template/science flux ratio ``F_r`` from two object tables.

    Objects are matched within ``radius`` pixels; flagged objects
    (deblended, saturated, at the edge, masked) are dropped; at least 6 pairs
    are needed. The zero point ``mag_t - mag_i`` is a Huber-weighted mean with
    weights from the magnitude errors.

    Returns
    -------
    (float, int)
        ``F_r`` and the number of pairs used.

    Raises
    ------
    FitError
        Fewer than 6 usable common objects.
    """
    from scipy.spatial import cKDTree

    log = log or (lambda *a: None)
    need = ("x", "y", "flux")
    for nm, t in (("image_obj", image_obj), ("template_obj", template_obj)):
        missing = [c for c in need if c not in t.colnames]
        if missing:
            raise InputError(f"{nm} lacks the column(s) {missing}.")

    def usable(t):
        ok = np.isfinite(np.asarray(t["x"], float)) & np.isfinite(np.asarray(t["flux"], float))
        ok &= np.asarray(t["flux"], float) > 0
        if "flags" in t.colnames:
            ok &= (np.asarray(t["flags"], int) & _BAD_MATCH_FLAGS) == 0
        return ok

    oi, ot = usable(image_obj), usable(template_obj)
    n = 0
    if oi.any() and ot.any():
        xi = np.c_[np.asarray(image_obj["x"], float)[oi], np.asarray(image_obj["y"], float)[oi]]
        xt = np.c_[np.asarray(template_obj["x"], float)[ot], np.asarray(template_obj["y"], float)[ot]]
        d, j = cKDTree(xt).query(xi, distance_upper_bound=radius)
        hit = np.isfinite(d)
        n = int(hit.sum())
    if n <= 5:
        raise FitError(
            f"the flux scale cannot be fitted: only {n} common unflagged objects in image and "
            f"template within {radius:.1f} px (need 6). Pass scale= explicitly."
        )
    fi = np.asarray(image_obj["flux"], float)[oi][hit]
    ft = np.asarray(template_obj["flux"], float)[ot][j[hit]]

    def relerr(t, sel):
        if "fluxerr" in t.colnames:
            fe = np.asarray(t["fluxerr"], float)[sel]
            fl = np.asarray(t["flux"], float)[sel]
            return np.where(np.isfinite(fe) & (fe > 0), fe / fl, 0.1)
        return np.full(sel.sum(), 0.1)

    ei = relerr(image_obj, oi)[hit]
    et = relerr(template_obj, ot)[j[hit]]
    zp = -2.5 * np.log10(ft / fi)
    sig = 1.0857 * np.hypot(ei, et) + 1e-3
    mu = float(np.median(zp))
    for _ in range(20):
        r = (zp - mu) / sig
        wt = np.where(np.abs(r) <= 1.345, 1.0, 1.345 / np.maximum(np.abs(r), 1e-12)) / sig ** 2
        new = float(np.sum(wt * zp) / np.sum(wt))
        if abs(new - mu) < 1e-7:
            mu = new
            break
        mu = new
    fr = 10 ** (-0.4 * mu)
    log(f"ZOGY: catalogue flux scale F_r={fr:.4f} from {n} common objects")
    return fr, n


def _good_regions(shape, objs, half, bad):
    """Squares of half-size ``half`` around objects, without bad pixels."""
    good = np.zeros(shape, dtype=bool)
    h, w = shape
    if bad is not None and bad.any():
        cum = np.zeros((h + 1, w + 1), dtype=np.int64)
        np.cumsum(np.cumsum(bad, axis=0), axis=1, out=cum[1:, 1:])
    else:
        cum = None
    for x, y in objs:
        ix, iy = int(round(x)), int(round(y))
        x0, x1, y0, y1 = ix - half, ix + half + 1, iy - half, iy + half + 1
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            continue
        if cum is not None and cum[y1, x1] - cum[y0, x1] - cum[y1, x0] + cum[y0, x0] > 0:
            continue
        good[y0:y1, x0:x1] = True
    return good


def run(image, template, mask=None, template_mask=None, err=None, template_err=None,
        image_psf=None, template_psf=None, image_gain=None, template_gain=None,
        image_fwhm=None, template_fwhm=None, scale=None, psf_clean=0, dx=0.25, dy=0.25,
        nx=1, ny=None, overlap=50, fit_scale=True, fit_shift=True, good_regions=None,
        image_obj=None, template_obj=None, get_psf=False, get_Fpsf=False, nthreads=0,
        verbose=False, cancel=None, _result=None, **kwargs):
    """The body of :func:`diffgui.engine.api.run_zogy` (see there).

    ``_result`` may be a dict that receives per-tile details (scales, shifts,
    PSFs, objects) for the GUI and tests.
    """
    from diffgui.engine.errors import validate_pair
    from diffgui.engine.common.noise import build_noise_map, estimate_background
    from diffgui.engine.psf import as_psf, estimate_psf, get_psf_stamp
    from diffgui.engine.common.tiling import make_tiles

    log = make_logger(verbose)
    est_kwargs = _split_kwargs(kwargs, log)
    vp = validate_pair(image, template, mask, template_mask, err, template_err)
    shape = vp.shape
    dx = _positive_float("dx", dx)
    dy = _positive_float("dy", dy)
    psf_clean = _positive_float("psf_clean", psf_clean or 0)
    if psf_clean >= 1:
        raise InputError(f"psf_clean must be in [0, 1), got {psf_clean}.")
    if scale is not None:
        scale = _positive_float("scale", scale, allow_zero=False)
    try:
        nthreads = int(nthreads or 0)
    except (TypeError, ValueError):
        raise InputError(f"nthreads must be an integer, got {nthreads!r}.") from None
    tiles = make_tiles(shape, nx, ny, overlap)
    info = _result if isinstance(_result, dict) else {}
    check_cancel(cancel)

    # ---- backgrounds and noise ---------------------------------------------------------
    bg_i = estimate_background(vp.image, vp.mask)
    bg_t = estimate_background(vp.template, vp.template_mask)
    N = vp.image - bg_i.back
    R = vp.template - bg_t.back

    def noise(e, img, gain, m, bg, name):
        if isinstance(e, np.ndarray):
            good = e[~m]
            return e, float(np.median(good))
        sig = build_noise_map(img, gain=gain, mask=m, background=bg)
        log(f"ZOGY: {name} noise map built from the background RMS"
            f"{' and gain ' + str(gain) if gain else ''}")
        return sig, float(bg.globalrms)

    err_n, sig_n = noise(vp.err, vp.image, image_gain, vp.mask, bg_i, "science")
    err_r, sig_r = noise(vp.template_err, vp.template, template_gain, vp.template_mask, bg_t, "template")
    del bg_i, bg_t  # their back/rms maps are no longer needed (memory on big frames)
    corr = kwargs.get("noise_correlation", False)
    if corr is None or corr is False:
        corr_n = corr_r = None
    elif isinstance(corr, str) or corr is True:
        if corr not in ("auto", True):
            raise InputError(f"noise_correlation must be 'auto', False or (kernel, kernel), got {corr!r}.")
        corr_n = estimate_noise_correlation(N, err_n, vp.mask)
        corr_r = estimate_noise_correlation(R, err_r, vp.template_mask)
        for nm, c in (("science", corr_n), ("template", corr_r)):
            if c is not None:
                r = c.shape[0] // 2
                log(f"ZOGY: {nm} noise is correlated (lag-1 correlation "
                    f"{c[r, r + 1]:.2f}, {c[r + 1, r]:.2f}): whitening it")
    else:
        try:
            corr_n, corr_r = (None if c is None else prepare_corr(c) for c in corr)
        except (TypeError, ValueError):
            raise InputError("noise_correlation must be 'auto', False or a pair of odd kernels.") from None
    check_cancel(cancel)

    # ---- PSFs and objects ------------------------------------------------------------
    def get_psf_model(given, img, m, e, fwhm, gain, name):
        if given is not None:
            return as_psf(given, f"{name}_psf"), None
        log(f"ZOGY: estimating the {name} PSF from its stars")
        return estimate_psf(img, mask=m, err=e, fwhm=fwhm, gain=gain, subtract_background=False,
                            get_obj=True, cancel=cancel, verbose=verbose, **est_kwargs)

    psf_i, obj_i = get_psf_model(image_psf, N, vp.mask, err_n, image_fwhm, image_gain, "image")
    check_cancel(cancel)
    psf_t, obj_t = get_psf_model(template_psf, R, vp.template_mask, err_r, template_fwhm,
                                 template_gain, "template")
    image_obj = obj_i if image_obj is None else image_obj
    template_obj = obj_t if template_obj is None else template_obj
    fwhm = max(float(psf_i["fwhm"]), float(psf_t["fwhm"]))
    info.update(image_psf=psf_i, template_psf=psf_t, image_obj=image_obj, template_obj=template_obj)

    # ---- flux scale ----------------------------------------------------------------
    if scale is None:
        if image_obj is not None and template_obj is not None:
            scale, _ = catalogue_scale(image_obj, template_obj, max(1.0, 0.5 * fwhm), log)
        else:
            scale = 1.0
            log("ZOGY: no scale and no object lists: starting from F_r = 1"
                + (" (fitted from the images)" if fit_scale else ""))

    # ---- fit regions -----------------------------------------------------------------
    bad = vp.mask | vp.template_mask
    fit_region = None
    if fit_scale or fit_shift:
        if good_regions is not None:
            as_good = np.asarray(good_regions)
            if as_good.shape != shape:
                raise InputError(f"good_regions has shape {as_good.shape}, the image {shape}.")
            fit_region = as_good.astype(bool)
        elif image_obj is not None and len(image_obj):
            xy = np.c_[np.asarray(image_obj["x"], float), np.asarray(image_obj["y"], float)]
            if "flags" in image_obj.colnames:
                xy = xy[(np.asarray(image_obj["flags"], int) & 0x4) == 0]
            fit_region = _good_regions(shape, xy, int(3 * fwhm), bad)
            if not fit_region.any():
                fit_region = None

    # ---- tiles ---------------------------------------------------------------------
    keys = ("D", "S_corr", "Fpsf", "Fpsf_err") if get_Fpsf else ("D", "S_corr")
    # One tile: its results are the outputs (no stitching copies).
    outs = {} if len(tiles) == 1 else {k: np.zeros(shape) for k in keys}
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    central = min(tiles, key=lambda t: (t.center[0] - cx) ** 2 + (t.center[1] - cy) ** 2)
    P_D = None
    info["tiles"] = []
    for tile in tiles:
        check_cancel(cancel)
        res = None
        o = tile.outer
        if bad[o].all():
            raise InputError(
                f"tile {tile.index} (x {o[1].start}-{o[1].stop}, y {o[0].start}-{o[0].stop}) is "
                "entirely masked: use fewer tiles or fix the masks."
            )
        tx, ty = tile.center
        pn = get_psf_stamp(psf_i, tx, ty, 0.0, 0.0)
        pr = get_psf_stamp(psf_t, tx, ty, 0.0, 0.0)
        fm = None
        if fit_region is not None:
            fm = fit_region[o]
            if np.count_nonzero(fm & ~bad[o]) < 100:
                fm = None
        if len(tiles) > 1:
            log(f"ZOGY: tile {tile.index + 1}/{len(tiles)} at x {o[1].start}-{o[1].stop}, "
                f"y {o[0].start}-{o[0].stop}")
        res = zogy_subtract(N[o], R[o], prepare_psf(pn, "image PSF", psf_clean),
                            prepare_psf(pr, "template PSF", psf_clean), err_n[o], err_r[o],
                            vp.mask[o], vp.template_mask[o], sigma_n=sig_n, sigma_r=sig_r,
                            scale=scale, fit_scale=fit_scale, fit_shift=fit_shift, fit_mask=fm,
                            dx=dx, dy=dy, get_psf=get_psf and tile is central, get_Fpsf=get_Fpsf,
                            corr_n=corr_n, corr_r=corr_r, nthreads=nthreads, cancel=cancel,
                            verbose=verbose)
        for k in keys:
            if len(tiles) == 1:
                outs[k] = getattr(res, k)
            else:
                outs[k][tile.inner] = getattr(res, k)[tile.inner_local]
        if tile is central:
            P_D = res.P_D
        info["tiles"].append({"inner": tile.inner, "outer": tile.outer, "scale": res.scale,
                              "shift": res.shift, "fit": res.fit})
    out = [outs["D"], outs["S_corr"]]
    if get_psf:
        out.append(P_D)
    if get_Fpsf:
        out += [outs["Fpsf"], outs["Fpsf_err"]]
    return out
