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
  usually one or two passes (:func:`diffgui.engine.zogy.fit.fit_scale_shift`).
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
from diffgui.engine.errors import InputError, check_cancel, make_logger
from diffgui.engine.zogy.fit import fit_scale_shift
from diffgui.engine.zogy.bad_pixels import _filled, _fit_pixels, _var_map
from diffgui.engine.zogy.fourier import (_gradients_sq, _pad, _rfft_weights, _shift_phase,
                                         _SmallGrid, _variance_map)
from diffgui.engine.zogy.noise_correlation import _whitening


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


def zogy_subtract(N, R, psf_n, psf_r, err_n=None, err_r=None, mask_n=None, mask_r=None, *,
                  sigma_n=None, sigma_r=None, scale=1.0, shift=(0.0, 0.0), fit_scale=False,
                  fit_shift=False, fit_mask=None, dx=0.25, dy=0.25, margin=None, get_psf=False,
                  get_S=False, get_Fpsf=False, get_noise=False, corr_n=None, corr_r=None,
                  background="none", max_iter=10, nthreads=0, cancel=None,
                  verbose=False) -> ZogyResult:
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
    background : {'none', 'mesh'}
        'mesh' removes a smooth background difference between the images:
        a constant and a plane are fitted with the scale and shift, and the
        mesh background (64 px) of ``D`` is subtracted from ``D`` and, through
        the score kernel, from ``S``. Crowded fields need it: their sky
        estimates differ by a fraction of the unresolved starlight, and
        ``S_corr`` sums such an offset over the PSF area (0.1 sigma per pixel
        becomes about 1 in ``S_corr``).
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
    N, R, Pn, Pr, bad_n, bad_r = _validated_inputs(N, R, psf_n, psf_r, err_n, err_r, mask_n, mask_r)
    bad = bad_n | bad_r
    if bad.all():
        raise InputError("every pixel is masked in the science image or the template (or both).")
    h, w = N.shape
    sig_n = _sigma_of(N, err_n, bad_n, sigma_n, "science")
    sig_r = _sigma_of(R, err_r, bad_r, sigma_r, "template")
    F = float(scale)
    if not np.isfinite(F) or F <= 0:
        raise InputError(f"scale (F_r) must be positive, got {scale!r}.")
    if background not in ("none", "mesh"):
        raise InputError(f"background must be 'none' or 'mesh', got {background!r}.")
    sx, sy = (float(v) for v in shift)
    m = fit_margin(Pn, Pr) if margin is None else max(1, int(margin))
    pshape = fft.padded_shape((h, w), (2 * m, 2 * m))
    nt = nthreads

    # ---- inputs: bad pixels -> 0 (background), their noise inflated ----------
    Nf, fill_n, hard_n = _filled(N, bad_n, err_n, sig_n)
    Rf, fill_r, hard_r = _filled(R, bad_r, err_r, sig_r)
    vmax = max(float(np.abs(Nf).max()), float(np.abs(Rf).max()) / F)
    sp = _spectra(Nf, Rf, Pn, Pr, corr_n, corr_r, m, pshape, nt)
    del Nf, Rf
    check_cancel(cancel)

    # ---- flux scale and shift -----------------------------------------------
    fitinfo = {"fit_scale": bool(fit_scale), "fit_shift": bool(fit_shift)}
    if fit_scale or fit_shift:
        fm = _fit_pixels(bad, hard_n | hard_r, Pn, Pr, fit_mask)
        F, sx, sy, fitinfo = fit_scale_shift(sp["Nh"], sp["Rh"], sp["Pnh"], sp["Prh"], sp["an2"],
                                             sp["ar2"], sig_n, sig_r, F, sx, sy, fm, m, pshape,
                                             bool(fit_scale), bool(fit_shift), int(max_iter), nt,
                                             cancel, log, bg_terms=3 if background == "mesh" else 0)
    if sx or sy:
        sp["Rh"] *= _shift_phase(pshape, sx, sy)
    check_cancel(cancel)

    # ---- D, P_D, noise of D ---------------------------------------------------------
    tiny = np.finfo(float).tiny
    g2, F_D, F_S = _normalisations(sp, sig_n, sig_r, F, pshape)
    g = np.sqrt(g2)
    crop = (slice(m, m + h), slice(m, m + w))
    D = _difference(sp, g, F, F_D, pshape, crop, nt)
    # Response of D and S to a smooth offset of N (1 and sum(k_n) without whitening).
    d0 = F * float(sp["Prh"][0, 0].real * g[0, 0] * sp["Pnh"][0, 0].real) / F_D
    s0 = F * F * float(sp["ar2"][0, 0] * g2[0, 0]) * float(sp["Pnh"][0, 0].real) ** 2
    bg_d = _background_of(D, bad, log) if background == "mesh" else None
    if bg_d is not None:
        D -= bg_d
    P_D = _difference_psf(sp, g, F, F_D, Pn, Pr, pshape, nt) if get_psf else None
    var_n = _var_map(err_n, bad_n, sig_n, max(vmax, sig_n) ** 2, m, pshape, fill_n)
    var_r = _var_map(err_r, bad_r, sig_r, max(vmax * F, sig_r) ** 2, m, pshape, fill_r)
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
    S_N, S_R = _score_parts(sp, g2, F, pshape, nt)
    del g2, g
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
    if bg_d is not None:
        bg_d *= s0 / d0
        S -= bg_d
        del bg_d
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


def _background_of(D, bad, log):
    """The smooth (64-pixel mesh) background of ``D``, sources and bad pixels ignored."""
    from diffgui.engine.common.noise import estimate_background

    h, w = D.shape
    box = int(min(64, max(16, min(h, w) // 4)))
    back = estimate_background(D, bad, box=box).back
    log(f"ZOGY: background difference removed: median {float(np.median(back)):.3g}, "
        f"{float(back.min()):.3g} to {float(back.max()):.3g} (science units)")
    return back


def _validated_inputs(N, R, psf_n, psf_r, err_n, err_r, mask_n, mask_r):
    """Float images, normalised PSF stamps and the bad-pixel masks of each image
    (masked, non-finite, or without a positive finite noise)."""
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
    return N, R, Pn, Pr, bad_n, bad_r


def _sigma_of(img, err, b, given, name):
    """Background noise: ``given``, else the median of ``err``, else a robust std of ``img``."""
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


def _spectra(Nf, Rf, Pn, Pr, corr_n, corr_r, m, pshape, nt):
    """Half spectra of the padded images and PSFs (whitened for correlated noise),
    and ``|P|**2``, as a dict (its entries are dropped as soon as they are used up)."""
    Nh = fft.rfft2(_pad(Nf, m, pshape), nt)
    Rh = fft.rfft2(_pad(Rf, m, pshape), nt)
    Pnh = fft.rfft2(fft.kernel_to_origin(Pn, pshape), nt)
    Prh = fft.rfft2(fft.kernel_to_origin(Pr, pshape), nt)
    for corr, Ih, Ph in ((corr_n, Nh, Pnh), (corr_r, Rh, Prh)):
        if corr is not None:
            wht = _whitening(corr, pshape)
            Ih *= wht
            Ph *= wht
            del wht
    return {"Nh": Nh, "Rh": Rh, "Pnh": Pnh, "Prh": Prh,
            "an2": np.abs(Pnh) ** 2, "ar2": np.abs(Prh) ** 2}


def _normalisations(sp, sig_n, sig_r, F, pshape):
    """``g**2 = 1 / den**2`` on the rfft grid, ``F_D`` and ``F_S``."""
    an2, ar2 = sp["an2"], sp["ar2"]
    den2 = (sig_n * sig_n * F * F) * ar2
    den2 += (sig_r * sig_r) * an2
    tiny = np.finfo(float).tiny
    g2 = np.where(den2 > tiny, 1.0 / np.maximum(den2, tiny), 0.0)
    del den2
    F_D = F / np.sqrt(sig_n * sig_n * F * F + sig_r * sig_r)
    wts = _rfft_weights(pshape)
    npix = float(pshape[0] * pshape[1])
    F_S = float(np.sum((F * F * an2 * ar2 * g2) * wts[None, :]) / npix)
    return g2, F_D, F_S


def _difference(sp, g, F, F_D, pshape, crop, nt):
    """``D = ifft((F_r P_R N - P_N R) / den) / F_D`` on the image pixels."""
    Dh = sp["Prh"] * sp["Nh"]
    Dh *= F
    tmp = sp["Pnh"] * sp["Rh"]
    Dh -= tmp
    del tmp
    Dh *= g
    D = fft.irfft2(Dh, pshape, nt)[crop]
    D *= 1.0 / F_D
    return D


def _difference_psf(sp, g, F, F_D, Pn, Pr, pshape, nt):
    """``P_D`` cropped to the larger PSF stamp, unit sum."""
    pdh = sp["Prh"] * sp["Pnh"]
    pdh *= g * (F / F_D)
    pd = fft.irfft2(pdh, pshape, nt)
    hy = max(Pn.shape[0], Pr.shape[0]) // 2
    hx = max(Pn.shape[1], Pr.shape[1]) // 2
    P_D = pd[np.ix_(np.arange(-hy, hy + 1) % pshape[0], np.arange(-hx, hx + 1) % pshape[1])]
    return P_D / P_D.sum()


def _score_parts(sp, g2, F, pshape, nt):
    """``S_N = ifft(k_n N)`` and ``S_R = ifft(k_r R)`` on the padded grid; empties ``sp``."""
    # Popped arrays are bound to names (not used as temporaries in an expression):
    # numpy would otherwise reuse a temporary's buffer and round differently.
    Pnh, Nh = sp.pop("Pnh"), sp.pop("Nh")
    kn_h = np.conj(Pnh)
    kn_h *= sp["ar2"] * g2 * (F * F)
    S_N = fft.irfft2(kn_h * Nh, pshape, nt)
    del kn_h, Nh, Pnh
    Prh, Rh, an2 = sp.pop("Prh"), sp.pop("Rh"), sp.pop("an2")
    kr_h = np.conj(Prh)
    kr_h *= an2 * g2 * F
    S_R = fft.irfft2(kr_h * Rh, pshape, nt)
    del kr_h, Rh, Prh, an2
    sp.clear()
    return S_N, S_R


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
