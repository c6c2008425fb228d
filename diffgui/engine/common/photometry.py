"""Forced PSF photometry on a difference image (no Qt).

At a fixed position the flux ``F`` of a point source is the weighted least-squares fit
of ``D ~ F P`` over the PSF footprint, with weights ``1 / sigma^2`` from the difference's
noise map:

    F = sum(P D / s^2) / sum(P^2 / s^2),   err(F) = 1 / sqrt(sum(P^2 / s^2))

``P`` is the PSF stamp (normalised to unit sum) shifted to the sub-pixel position with
cubic-spline interpolation. Masked and non-finite pixels get zero weight. An optional
constant background can be fitted at the same time (``fit_background=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffgui.engine.errors import InputError, as_image, as_mask

__all__ = ["ForcedFlux", "RefinedPosition", "forced_psf_flux", "psf_fwhm", "psf_flux_noise_scale", "refine_position"]


@dataclass
class ForcedFlux:
    """Result of :func:`forced_psf_flux`.

    Attributes
    ----------
    flux, flux_err : float
        PSF flux and its 1-sigma error (image units x pixels); nan when no pixel is usable.
    chi2 : float
        Chi-square of the fit over the footprint.
    npix : int
        Pixels used.
    background : float
        Fitted constant (0 when not fitted).
    """

    flux: float
    flux_err: float
    chi2: float
    npix: int
    background: float = 0.0


def _shifted_psf(psf, fx, fy):
    from scipy import ndimage

    p = np.asarray(psf, float)
    if abs(fx) > 1e-6 or abs(fy) > 1e-6:
        p = ndimage.shift(p, (fy, fx), order=3, mode="constant", cval=0.0)
    s = p.sum()
    if not np.isfinite(s) or s <= 0:
        raise InputError("the PSF stamp must have a positive, finite sum")
    return p / s


def forced_psf_flux(diff, noise, x: float, y: float, psf, *, mask=None, radius: float | None = None,
                    fit_background: bool = False) -> ForcedFlux:
    """Forced PSF flux at ``(x, y)`` (0-based pixels) on ``diff``.

    Parameters
    ----------
    diff : array_like
        Difference image.
    noise : array_like
        Its noise (sigma) map.
    x, y : float
        Position (0-based pixel centres).
    psf : array_like
        PSF stamp, odd sides, centred on its middle pixel (normalised here).
    mask : array_like of bool, optional
        Bad pixels (True).
    radius : float, optional
        Use only pixels within this radius of the position (default: the whole stamp).
    fit_background : bool
        Fit a constant background together with the flux.

    Returns
    -------
    ForcedFlux

    Raises
    ------
    InputError
        Shapes that differ, an even or empty PSF, a position outside the image.
    """
    d, s, m = _difference_noise_mask(diff, noise, mask)
    p0 = np.asarray(psf, float)
    if p0.ndim != 2 or p0.shape[0] % 2 == 0 or p0.shape[1] % 2 == 0:
        raise InputError(f"the PSF stamp must be 2-D with odd sides, got shape {p0.shape}")
    ny, nx = d.shape
    if not (np.isfinite(x) and np.isfinite(y) and -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
        raise InputError(f"position ({x}, {y}) is outside the {nx} x {ny} image")
    ix, iy = int(round(x)), int(round(y))
    p = _shifted_psf(p0, x - ix, y - iy)
    hy, hx = p.shape[0] // 2, p.shape[1] // 2
    y0, y1, x0, x1 = max(iy - hy, 0), min(iy + hy + 1, ny), max(ix - hx, 0), min(ix + hx + 1, nx)
    pp = p[y0 - (iy - hy): p.shape[0] - ((iy + hy + 1) - y1), x0 - (ix - hx): p.shape[1] - ((ix + hx + 1) - x1)]
    dd, ss = d[y0:y1, x0:x1], s[y0:y1, x0:x1]
    good = np.isfinite(dd) & np.isfinite(ss) & (ss > 0)
    if m is not None:
        good &= ~m[y0:y1, x0:x1]
    if radius is not None:
        yy, xx = np.mgrid[y0:y1, x0:x1]
        good &= np.hypot(xx - x, yy - y) <= radius
    if good.sum() < 3 or pp[good].sum() < 0.2:
        return ForcedFlux(np.nan, np.nan, np.nan, int(good.sum()))
    w = 1.0 / ss[good] ** 2
    a_cols = [pp[good]] + ([np.ones(good.sum())] if fit_background else [])
    a = np.column_stack(a_cols)
    ata = a.T @ (a * w[:, None])
    atb = a.T @ (dd[good] * w)
    cov = np.linalg.inv(ata)
    sol = cov @ atb
    resid = dd[good] - a @ sol
    chi2 = float(np.sum(resid ** 2 * w))
    return ForcedFlux(float(sol[0]), float(np.sqrt(cov[0, 0])), chi2, int(good.sum()),
                      float(sol[1]) if fit_background else 0.0)


def psf_flux_noise_scale(diff, noise, psf, *, mask=None, radius: float | None = None, step: int | None = None,
                         fit_background: bool = False) -> float:
    """Ratio of the empirical to the noise-map error of PSF fluxes at positions all over ``diff``.

    ``err(F) = 1 / sqrt(sum(P^2 / s^2))`` treats pixels as independent, but resampling
    (registration), kernel convolution and a noise map that is not exact make the
    difference's noise correlated or mis-scaled, which the per-pixel map cannot show. The
    PSF flux over its error, ``F / err(F)``, is computed at every pixel by FFT correlation
    and sampled on a grid ``step`` apart (default: the footprint's radius); its robust
    standard deviation (1.4826 MAD about the median, so stars and their residuals, a
    minority of positions, do not count) is the factor by which the map's errors are to be
    multiplied. 1.0 for white noise with a correct map.

    Parameters
    ----------
    diff, noise : array_like
        Difference image and its noise (sigma) map.
    psf : array_like
        PSF stamp (odd sides, centred).
    mask : array_like of bool, optional
        Bad pixels (zero weight; positions whose footprint touches one are left out).
    radius : float, optional
        Footprint radius (px), as used for the flux itself (default: the whole stamp).
    step : int, optional
        Grid spacing of the sampled positions.
    fit_background : bool
        The fluxes are fitted with a constant over the footprint (as in :func:`forced_psf_flux`);
        such a fit is blind to noise correlated on scales larger than the footprint.

    Returns
    -------
    float
        The factor (nan when fewer than 50 positions are usable).
    """
    from . import fft as _fft

    d, s, m = _difference_noise_mask(diff, noise, mask)
    p = np.asarray(psf, float)
    hy, hx = p.shape[0] // 2, p.shape[1] // 2
    yy, xx = np.mgrid[-hy:hy + 1, -hx:hx + 1]
    foot = np.ones(p.shape, bool) if radius is None else np.hypot(xx, yy) <= radius
    p = np.where(foot, p, 0.0)
    p = p / p.sum()
    good = np.isfinite(d) & np.isfinite(s) & (s > 0)
    if m is not None:
        good &= ~m
    w = np.where(good, 1.0 / np.where(good, s, 1.0) ** 2, 0.0)
    wd = np.where(good, d, 0.0) * w

    fshape = _fft.padded_shape(d.shape, (2 * hy, 2 * hx))  # zero padding: no wrap-around
    spectra = {}

    def corr(a, k):  # sum over the footprint at every position (k flipped: correlation)
        if id(a) not in spectra:
            buf = np.zeros(fshape)
            buf[: d.shape[0], : d.shape[1]] = a
            spectra[id(a)] = _fft.rfft2(buf)
        fk = _fft.rfft2(_fft.kernel_to_origin(k[::-1, ::-1], fshape))
        return _fft.irfft2(spectra[id(a)] * fk, fshape)[: d.shape[0], : d.shape[1]]

    one = foot.astype(float)
    spp, bp = corr(w, p * p), corr(wd, p)
    if fit_background:  # 2x2 normal equations at every position; var(F) = S11 / det
        sp1, s11, b1 = corr(w, p), corr(w, one), corr(wd, one)
        det = spp * s11 - sp1 * sp1
        var = np.where(det > 0, s11 / np.where(det > 0, det, 1.0), 0.0)
        flux = np.where(det > 0, (s11 * bp - sp1 * b1) / np.where(det > 0, det, 1.0), 0.0)
    else:
        var = np.where(spp > 0, 1.0 / np.where(spp > 0, spp, 1.0), 0.0)
        flux = bp * var
    bad = (~good).astype(float)
    bad_near = corr(bad, one) > 0.5
    step = int(step or max(2, round(radius or max(hx, hy))))
    ny, nx = d.shape
    sel = (slice(hy, ny - hy, step), slice(hx, nx - hx, step))
    ok = ~bad_near[sel] & (var[sel] > 0)
    z = flux[sel][ok] / np.sqrt(var[sel][ok])
    if z.size < 50:
        return float("nan")
    return float(1.4826 * np.median(np.abs(z - np.median(z))))


@dataclass
class RefinedPosition:
    """Result of :func:`refine_position`.

    Attributes
    ----------
    x, y : float
        Best position (0-based pixels); the input position when nothing could be fitted.
    n_frames : int
        Differences whose source was significant enough to take part.
    chi2_start, chi2_best : float
        Summed chi-square of the PSF fits at the input and at the best position.
    """

    x: float
    y: float
    n_frames: int
    chi2_start: float = float("nan")
    chi2_best: float = float("nan")


def refine_position(frames, x: float, y: float, *, radius: float | None = None, max_shift: float = 2.0,
                    min_snr: float = 20.0, max_frames: int = 20) -> RefinedPosition:
    """Fit the position of a variable source jointly over its difference images.

    A position typed or clicked by a user, or a template catalogue's centroid (pulled by
    blended neighbours in a crowded field), can be off by a fraction of a pixel; forced
    photometry there leaves a dipole residual proportional to the flux, biases the flux low
    and inflates the fit's chi-square. The position is refined here the usual way of
    difference-imaging light curves: one position for the whole series, found by minimising
    the summed chi-square of PSF fits (flux and constant background free in every frame)
    over the differences where the source is significant, within ``max_shift`` pixels.

    Parameters
    ----------
    frames : iterable of (diff, noise, psf, mask)
        Differences, noise maps, PSF stamps (odd sides) and masks (or None), all on one grid.
    x, y : float
        Starting position (0-based).
    radius : float, optional
        Fit radius (default: twice each PSF's FWHM, at least 5 px).
    max_shift : float
        Largest distance (px) from the starting position.
    min_snr : float
        Frames whose |flux / error| at the starting position is below this are left out.
    max_frames : int
        At most this many frames (the most significant) are used.

    Returns
    -------
    RefinedPosition
    """
    from scipy.optimize import minimize

    used = []
    for diff, noise, psf, mask in frames:
        d, s, m = _difference_noise_mask(diff, noise, mask)
        r = radius or max(2.0 * psf_fwhm(psf), 5.0)
        # a cutout keeps the many evaluations cheap: footprint + shift + PSF half-size
        h = int(np.ceil(max_shift + max(r, max(np.shape(psf)) // 2))) + 2
        iy, ix = int(round(y)), int(round(x))
        y0, x0 = max(iy - h, 0), max(ix - h, 0)
        sl = (slice(y0, iy + h + 1), slice(x0, ix + h + 1))
        cut = (d[sl], s[sl], None if m is None else m[sl], np.asarray(psf, float), r, x0, y0)
        f = forced_psf_flux(cut[0], cut[1], x - x0, y - y0, cut[3], mask=cut[2], radius=r, fit_background=True)
        if np.isfinite(f.flux) and f.flux_err > 0 and abs(f.flux / f.flux_err) >= min_snr:
            used.append((abs(f.flux / f.flux_err), cut))
    used = [c for _, c in sorted(used, key=lambda u: -u[0])[:max_frames]]
    if not used:
        return RefinedPosition(float(x), float(y), 0)

    def total(p):
        if np.hypot(p[0] - x, p[1] - y) > max_shift:
            return 1e30
        c2 = 0.0
        for d, s, m, psf, r, x0, y0 in used:
            f = forced_psf_flux(d, s, p[0] - x0, p[1] - y0, psf, mask=m, radius=r, fit_background=True)
            c2 += f.chi2 if np.isfinite(f.chi2) else 1e30
        return c2

    start = total((x, y))
    # a coarse grid first (the chi-square surface of a blend can have shallow side minima)
    step = 0.25
    grid = [(x + a, y + b) for a in np.arange(-max_shift, max_shift + 1e-9, step)
            for b in np.arange(-max_shift, max_shift + 1e-9, step) if np.hypot(a, b) <= max_shift]
    best = min(grid, key=total)
    res = minimize(total, best, method="Nelder-Mead", options={"xatol": 0.005, "fatol": 1e-3,
                                                                "initial_simplex": [best, (best[0] + step, best[1]),
                                                                                    (best[0], best[1] + step)]})
    chi2_grid = total(best)
    bx, by = (res.x if res.fun <= chi2_grid else best)
    return RefinedPosition(float(bx), float(by), len(used), float(start), float(min(res.fun, chi2_grid)))


def psf_fwhm(psf) -> float:
    """FWHM (px) of a PSF stamp from its half-maximum area (``2 sqrt(A / pi)``)."""
    p = np.asarray(psf, float)
    peak = np.nanmax(p)
    if not np.isfinite(peak) or peak <= 0:
        return float("nan")
    area = float(np.count_nonzero(p >= 0.5 * peak))
    return 2.0 * np.sqrt(area / np.pi)


def stack_psf(image, mask=None, *, size: int | None = None, max_stars: int = 40, thresh: float = 10.0):
    """Empirical PSF stamp: the median of the brightest clean stars, recentred and normalised.

    Parameters
    ----------
    image : array_like
        Image whose PSF is wanted (e.g. the PSF-matched image of a subtraction).
    mask : array_like of bool, optional
        Bad pixels.
    size : int, optional
        Odd stamp side (default ``2 ceil(2.5 FWHM) + 1``, at least 11).
    max_stars : int
        Stars stacked (brightest unflagged, not touching each other's cores).
    thresh : float
        Detection threshold (sigma).

    Returns
    -------
    ndarray
        Stamp with unit sum, centred on its middle pixel.

    Raises
    ------
    FitError
        Fewer than 3 usable stars.
    """
    from scipy import ndimage

    from diffgui.engine.errors import FitError

    from .detection import detect_objects

    img = as_image(image, "image")
    m = as_mask(mask, img.shape, "mask")
    cat = detect_objects(img, mask=m, thresh=thresh, minarea=5)
    if len(cat) < 3:
        raise FitError(f"only {len(cat)} stars detected to build a PSF")
    fwhm = float(np.nanmedian(cat["fwhm"][:100]))
    if size is None:
        size = max(11, 2 * int(np.ceil(2.5 * fwhm)) + 1)
    h = size // 2
    ny, nx = img.shape
    xy = np.column_stack([cat["x"], cat["y"]])
    clean = (np.asarray(cat["flags"]) & (0x4 | 0x8 | 0x100)) == 0
    stamps = []
    for i in np.nonzero(clean)[0]:
        x, y = xy[i]
        ix, iy = int(round(x)), int(round(y))
        if ix - h - 1 < 0 or iy - h - 1 < 0 or ix + h + 2 > nx or iy + h + 2 > ny:
            continue
        d = np.hypot(*(xy - xy[i]).T)
        brighter_near = (d > 0) & (d < 1.5 * fwhm) & (np.asarray(cat["flux"]) > 0.2 * cat["flux"][i])
        if brighter_near.any():
            continue
        st = img[iy - h - 1: iy + h + 2, ix - h - 1: ix + h + 2].astype(float)
        if m is not None and m[iy - h - 1: iy + h + 2, ix - h - 1: ix + h + 2].any():
            continue
        edge = np.concatenate([st[0], st[-1], st[:, 0], st[:, -1]])
        st = ndimage.shift(st - np.median(edge), (iy - y, ix - x), order=3, mode="nearest")[1:-1, 1:-1]
        s = st.sum()
        if s > 0 and np.isfinite(s):
            stamps.append(st / s)
        if len(stamps) >= max_stars:
            break
    if len(stamps) < 3:
        raise FitError(f"only {len(stamps)} clean stars to build a PSF")
    psf = np.median(np.array(stamps), axis=0)
    return psf / psf.sum()


def _difference_noise_mask(diff, noise, mask):
    """The difference as a float image, its noise map (same shape) and its mask."""
    d = as_image(diff, "difference")
    s = np.asarray(noise, float)
    if s.shape != d.shape:
        raise InputError(f"noise map shape {s.shape} differs from the difference's {d.shape}")
    return d, s, as_mask(mask, d.shape, "mask")
