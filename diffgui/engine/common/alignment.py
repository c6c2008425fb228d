"""Is a science/template pair aligned? Offsets, rotation and scale from matched stars.

:func:`measure_offset` works in two steps. A coarse offset comes from FFT
cross-correlation of the two images after removing their smooth background
(a box filter) and clipping bright stars, in a central crop and in four
sub-regions (a rough rotation from how their offsets turn about the centre);
it finds the match even for shifts of many pixels. Cross-correlation is biased
by a few tenths of a pixel when the PSFs differ (seeing, asymmetric PSFs,
extended galaxies), so the offset is then measured from bright, unsaturated,
isolated stars: their windowed centroids with the same Gaussian window in both
images (:mod:`~diffgui.engine.common.centroids`), and a sigma-clipped
least-squares fit of a translation, plus rotation and scale when there are
enough well-spread stars, with 1-sigma uncertainties. Without enough stars
(galaxy fields, nearly empty images) the correlation result is kept and its
bias allowance ``XCORR_BIAS`` is its uncertainty.

:func:`check_alignment` raises :class:`~diffgui.engine.errors.InputError`
naming the offset when the largest displacement over the image exceeds
``max_shift`` (0.3 px by default) by more than its uncertainty. Convention:
``dx, dy`` is the position of a source in the science image minus its position
in the template.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from diffgui.engine.common.centroids import local_peaks, star_pairs
from diffgui.engine.errors import InputError, as_image, as_mask

__all__ = ["Offset", "measure_offset", "check_alignment", "MAX_SHIFT", "MIN_PEAK", "XCORR_BIAS"]

#: Largest offset (px) anywhere in the image that still counts as aligned.
MAX_SHIFT = 0.3
#: Correlation peaks below this normalised value are not trusted (no common structure).
MIN_PEAK = 0.15
#: Fraction of pixels above 5 sigma that makes an image structured enough to demand a match.
MIN_STRUCTURE = 0.005
#: Fewest matched stars for a star-based offset; fewer: the correlation's offset is used.
MIN_STARS = 4
#: Fewest matched stars (spread over the image) to fit rotation and scale as well.
MIN_STARS_ROTATION = 12
#: Uncertainty (px) of a correlation-only offset: its bias between different PSFs
#: (0.4-0.7 px measured on the DECam frames of one grid whose seeing differs).
XCORR_BIAS = 0.75
#: Systematic floor (px) added in quadrature to the star fit's shift uncertainty: on the 70
#: pyDIA frames these centroids and registration.find_transform's star matching differ by
#: 0.014 px (median) and 0.03 px (95th percentile).
SYSTEMATIC = 0.03
_CROP = 512          # side of the central crop and of each sub-region
_BOX = 15            # background box filter (px)
_NEIGHBOUR_SIGMA = 5.0  # local maxima above this (sky sigmas) count as neighbours of a star


@dataclass
class Offset:
    """Measured misalignment of a science image relative to its template.

    Attributes
    ----------
    dx, dy : float
        Shift (px) at the image centre: science position minus template position.
    rotation : float
        Rotation (degrees; positive turns +x towards +y in pixel coordinates) of
        the science relative to the template about the image centre; 0 when it
        could not be measured.
    peak : float
        Normalised cross-correlation at the coarse peak (1 = identical structure).
    reliable : bool
        False when the peak is too low (``< MIN_PEAK``) to trust the numbers.
    max_displacement : float
        Largest shift (px) over the image implied by the fitted transform (at a corner).
    regions : list of tuple
        ``(x, y, dx, dy, peak)`` for each sub-region correlated.
    structure : float
        Fraction of pixels above 5 sigma in the poorer of the two central
        crops: how many sources the images have to correlate.
    method : str
        'stars' (windowed centroids of matched stars) or 'correlation' (too few stars).
    error : tuple of float
        1-sigma uncertainty of ``(dx, dy)`` (px).
    max_displacement_error : float
        1-sigma uncertainty of ``max_displacement`` (px).
    rotation_error : float
        1-sigma uncertainty of ``rotation`` (degrees; 0 when not fitted).
    scale : float
        Science pixel scale relative to the template's (1 when not fitted).
    n_stars : int
        Stars in the final fit (after clipping).
    rms : float
        RMS (px) of the star offsets about the fit.
    fwhm : tuple of float
        Median FWHM (px) of the bright stars in (science, template), when measured.
    """

    dx: float
    dy: float
    rotation: float = 0.0
    peak: float = 0.0
    reliable: bool = True
    max_displacement: float = 0.0
    regions: list = field(default_factory=list)
    structure: float = 0.0
    method: str = "correlation"
    error: tuple = (XCORR_BIAS, XCORR_BIAS)
    max_displacement_error: float = XCORR_BIAS
    rotation_error: float = 0.0
    scale: float = 1.0
    n_stars: int = 0
    rms: float = float("nan")
    fwhm: tuple = ()

    def describe(self) -> str:
        """``'(3.20, -1.10) px'`` and the rotation when there is one."""
        text = f"({self.dx:.2f}, {self.dy:.2f}) px"
        if abs(self.rotation) >= 0.005:
            text += f" and rotated by {self.rotation:.3f} deg"
        if abs(self.scale - 1.0) >= 1e-4:
            text += f" and scaled by {self.scale:.5f}"
        return text

    def how(self) -> str:
        """How the offset was measured, for logs and errors."""
        if self.method == "stars":
            return (f"from {self.n_stars} stars, +- ({self.error[0]:.3f}, {self.error[1]:.3f}) px, "
                    f"correlation peak {self.peak:.2f}")
        return (f"from cross-correlation only (too few isolated stars), which can be off by up to "
                f"{XCORR_BIAS:g} px between different PSFs; correlation peak {self.peak:.2f}")


def _highpass(img, m):
    """Background-subtracted copy in sky sigmas (masked pixels 0), its bad pixels and structure."""
    a = np.asarray(img, dtype=np.float32)
    bad = ~np.isfinite(a)
    if m is not None:
        bad |= m
    if bad.all():
        return None
    if bad.any():
        a = np.where(bad, np.float32(np.median(a[~bad][::7])), a)
    a = a - ndimage.uniform_filter(a, _BOX, mode="nearest")
    good = a[::3, ::3][~bad[::3, ::3]]  # a subsample is ample for the sky's median and spread
    if good.size < 10:
        good = a[~bad]
    med = float(np.median(good))
    sig = 1.4826 * float(np.median(np.abs(good - med)))
    if not sig > 0:
        sig = float(np.std(good)) or 1.0
    a = (a - med) / sig
    a[bad] = 0.0
    return a, bad, float(np.count_nonzero(a > 5.0)) / a.size


def _prepare(high):
    """Clipped, tapered, zero-mean copy of a :func:`_highpass` result for the correlation."""
    if high is None:
        return None
    a, bad, structure = high
    a = np.clip(a, -5.0, 20.0)
    ny, nx = a.shape
    a *= np.hanning(ny).astype(np.float32)[:, None]
    a *= np.hanning(nx).astype(np.float32)[None, :]
    a -= a.mean()
    return a, structure


def _peak_1d(c_minus, c0, c_plus) -> float:
    """Sub-pixel position (-0.5..0.5) of a peak from three samples (Gaussian, else parabola)."""
    if c_minus > 0 and c0 > 0 and c_plus > 0:
        lm, l0, lp = np.log(c_minus), np.log(c0), np.log(c_plus)
        den = lm - 2 * l0 + lp
        if den < 0:
            return float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5))
    den = c_minus - 2 * c0 + c_plus
    return float(np.clip(0.5 * (c_minus - c_plus) / den, -0.5, 0.5)) if den < 0 else 0.0


def _correlate(a, b, max_lag):
    """Shift of ``a`` relative to ``b`` and the normalised peak, or None."""
    if a is None or b is None:
        return None
    (a, _), (b, _) = a, b
    fa = sfft.rfft2(a)
    fa *= np.conj(sfft.rfft2(b))
    c = sfft.irfft2(fa, s=a.shape)
    norm = float(np.sqrt(np.dot(a.ravel(), a.ravel()) * np.dot(b.ravel(), b.ravel())))
    if not norm > 0:
        return None
    c = np.fft.fftshift(c) / norm
    ny, nx = c.shape
    cy, cx = ny // 2, nx // 2
    lag = int(max(2, min(max_lag, cy - 2, cx - 2)))
    win = c[cy - lag:cy + lag + 1, cx - lag:cx + lag + 1]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    iy += cy - lag
    ix += cx - lag
    if not (0 < iy < ny - 1 and 0 < ix < nx - 1):
        return None
    fy = _peak_1d(c[iy - 1, ix], c[iy, ix], c[iy + 1, ix])
    fx = _peak_1d(c[iy, ix - 1], c[iy, ix], c[iy, ix + 1])
    return ix - cx + fx, iy - cy + fy, float(c[iy, ix])


def _box(shape, xc, yc, size):
    ny, nx = shape
    h = size // 2
    x0 = int(np.clip(round(xc) - h, 0, max(nx - size, 0)))
    y0 = int(np.clip(round(yc) - h, 0, max(ny - size, 0)))
    return slice(y0, min(y0 + size, ny)), slice(x0, min(x0 + size, nx))


def _measure_box(img, tmpl, m, tm, sl, max_lag, peaks=None):
    """Correlate one box; with ``peaks`` (a list), append the template's local maxima there."""
    ha = _highpass(img[sl], None if m is None else m[sl])
    hb = _highpass(tmpl[sl], None if tm is None else tm[sl])
    got = _correlate(_prepare(ha), _prepare(hb), max_lag)
    structure = min(ha[2] if ha is not None else 0.0, hb[2] if hb is not None else 0.0)
    if peaks is not None and hb is not None:
        y, x, v = local_peaks(hb[0], _NEIGHBOUR_SIGMA)
        peaks.append((x + sl[1].start, y + sl[0].start, v))
    return got, structure


def _fit_rotation(regions, xc, yc):
    """Least-squares rotation (radians) from sub-region offsets."""
    if len(regions) < 3:
        return 0.0
    num = den = 0.0
    mdx = np.mean([r[2] for r in regions])
    mdy = np.mean([r[3] for r in regions])
    for x, y, dx, dy, _ in regions:
        rx, ry = x - xc, y - yc
        num += -ry * (dx - mdx) + rx * (dy - mdy)
        den += rx * rx + ry * ry
    return num / den if den > 0 else 0.0


def _design(xy, similarity):
    """Rows ``[1, 0, X, -Y]`` (x) and ``[0, 1, Y, X]`` (y) of the model, interleaved."""
    n = len(xy)
    a = np.zeros((2 * n, 4 if similarity else 2))
    a[0::2, 0] = 1.0
    a[1::2, 1] = 1.0
    if similarity:
        a[0::2, 2], a[0::2, 3] = xy[:, 0], -xy[:, 1]
        a[1::2, 2], a[1::2, 3] = xy[:, 1], xy[:, 0]
    return a


def _lsq(xy, d, keep, similarity):
    """Least-squares parameters on the kept stars and the residuals of all stars."""
    p, *_ = np.linalg.lstsq(_design(xy[keep], similarity), d[keep].ravel(), rcond=None)
    return p, d - (_design(xy, similarity) @ p).reshape(-1, 2)


def _fit_stars(stars, centre, radius, shift):
    """Sigma-clipped least-squares fit of the star offsets about ``centre``.

    Stars more than 1.5 px from the coarse ``shift`` model are left out from the start.
    Returns ``(params, cov, n_used, rms)`` with params ``(dx, dy[, a, b])``: the offset at
    the centre and, with enough well-spread stars, ``scale - 1`` and the rotation (rad);
    None with fewer than ``MIN_STARS`` stars.
    """
    xy = stars.template_xy - np.asarray(centre)
    d = stars.science_xy - stars.template_xy
    spread = float(np.sqrt(np.mean(np.sum((xy - xy.mean(0)) ** 2, 1)))) if len(xy) else 0.0
    similarity = len(xy) >= MIN_STARS_ROTATION and spread >= 0.2 * radius
    guess = np.column_stack(shift(stars.template_xy[:, 0], stars.template_xy[:, 1]))
    keep = np.hypot(*(d - guess).T) < 1.5
    for _ in range(6):
        similarity = similarity and keep.sum() >= MIN_STARS_ROTATION
        if keep.sum() < MIN_STARS:
            return None
        p, res = _lsq(xy, d, keep, similarity)
        r = np.hypot(*res.T)
        new = r < max(2.5 * float(np.median(r[keep])), 0.03)  # 2.5 x median = 2.9 sigma (Rayleigh)
        if np.array_equal(new, keep):
            break
        keep = new
    similarity = similarity and keep.sum() >= MIN_STARS_ROTATION
    if keep.sum() < MIN_STARS:
        return None
    p, res = _lsq(xy, d, keep, similarity)
    a = _design(xy[keep], similarity)
    var = float(np.sum(res[keep] ** 2)) / max(2 * keep.sum() - a.shape[1], 1)
    cov = var * np.linalg.inv(a.T @ a)
    cov[0, 0] += SYSTEMATIC ** 2
    cov[1, 1] += SYSTEMATIC ** 2
    return p, cov, int(keep.sum()), float(np.sqrt(np.mean(np.sum(res[keep] ** 2, 1))))


def _corner_displacement(params, cov, shape):
    """Largest displacement over the image corners and the 1-sigma error of the worst corner."""
    ny, nx = shape
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    best = (0.0, 0.0, -np.inf)
    for x, y in ((-xc, -yc), (xc, -yc), (-xc, yc), (xc, yc)):
        j = _design(np.array([[x, y]]), len(params) == 4)
        v = j @ params
        c = j @ cov @ j.T
        size = float(np.hypot(*v))
        u = v / size if size > 0 else np.array([1.0, 0.0])
        err = float(np.sqrt(max(u @ c @ u, 0.0)))
        if size - err > best[2]:
            best = (size, err, size - err)
    return best[0], best[1]


def _coarse_model(dx, dy, theta, xc, yc):
    def shift(x, y):
        return dx - theta * (y - yc), dy + theta * (x - xc)
    return shift


def _unique_peaks(peaks):
    """Concatenate the per-box peak lists, dropping pixels found in overlapping boxes."""
    if not peaks:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    x, y, v = (np.concatenate(a) for a in zip(*peaks))
    _, first = np.unique(y.astype(np.int64) * 1_000_003 + x, return_index=True)
    return x[first], y[first], v[first]


def _by_stars(img, tmpl, m, tm, peaks, shift):
    """Star fit as ``(params, cov, n, rms, fwhm)``, or None when too few stars."""
    bad = ~np.isfinite(img) if m is None else (m | ~np.isfinite(img))
    tbad = ~np.isfinite(tmpl) if tm is None else (tm | ~np.isfinite(tmpl))
    a = np.where(bad, 0.0, img) if bad.any() else img
    b = np.where(tbad, 0.0, tmpl) if tbad.any() else tmpl
    stars = star_pairs(a, b, bad, tbad, _unique_peaks(peaks), shift)
    if stars is None:
        return None
    ny, nx = img.shape
    fit = _fit_stars(stars, ((nx - 1) / 2.0, (ny - 1) / 2.0), 0.5 * np.hypot(nx, ny), shift)
    return None if fit is None else (*fit, stars.fwhm)


def _correlation_offset(dx, dy, theta, peak, reliable, regions, structure, xc, yc):
    """Offset from the correlation alone; each region offset may be biased by ``XCORR_BIAS``."""
    corner = float(np.hypot(xc, yc))
    rot_err = XCORR_BIAS / float(np.mean([np.hypot(r[0] - xc, r[1] - yc) for r in regions])) if regions else 0.0
    return Offset(float(dx), float(dy), float(np.degrees(theta)), peak, reliable,
                  float(np.hypot(dx, dy)) + abs(theta) * corner, regions, structure, method="correlation",
                  error=(XCORR_BIAS, XCORR_BIAS), max_displacement_error=float(np.hypot(XCORR_BIAS, rot_err * corner)),
                  rotation_error=float(np.degrees(rot_err)))


def measure_offset(image, template, mask=None, template_mask=None, *, max_lag: int | None = None,
                   crop: int = _CROP, rotation: bool = True) -> Offset:
    """Measure the offset (and rotation, scale) of ``image`` relative to ``template``.

    A coarse offset comes from FFT cross-correlation (central crop, and four
    sub-regions for a rough rotation); it is refined by the windowed centroids of
    bright, unsaturated, isolated stars measured in both images with one window
    (:mod:`~diffgui.engine.common.centroids`), fitted with sigma clipping. Without
    enough stars (``MIN_STARS``) the correlation result is returned with
    ``method='correlation'`` and the bias allowance ``XCORR_BIAS`` as its error.

    Parameters
    ----------
    image, template : array_like
        2-D images of the same shape (any background; NaN allowed).
    mask, template_mask : array_like of bool, optional
        True = bad pixel (ignored).
    max_lag : int, optional
        Largest shift searched (px); default 3/8 of ``crop``.
    crop : int
        Side of the central crop and of the sub-regions (px); stars are taken from them.
    rotation : bool
        Also measure the four sub-regions and fit rotation and scale when there are
        enough stars (``MIN_STARS_ROTATION``); False: translation only.

    Returns
    -------
    Offset

    Raises
    ------
    InputError
        Different shapes, images that are not 2-D, or everything masked.
    """
    img = as_image(image, "image")
    tmpl = as_image(template, "template")
    if img.shape != tmpl.shape:
        raise InputError(f"science and template have different shapes {img.shape} and {tmpl.shape}: "
                         "an offset can only be measured on one pixel grid.")
    m = as_mask(mask, img.shape, "mask")
    tm = as_mask(template_mask, img.shape, "template_mask")
    ny, nx = img.shape
    size = int(min(crop, ny, nx))
    yc, xc = (ny - 1) / 2.0, (nx - 1) / 2.0
    max_lag = 3 * size // 8 if max_lag is None else int(max_lag)
    peaks: list = []
    centre, structure = _measure_box(img, tmpl, m, tm, _box(img.shape, xc, yc, size), max_lag, peaks)
    if centre is None:
        return Offset(0.0, 0.0, 0.0, 0.0, False, structure=structure)
    dx, dy, peak = centre
    regions = []
    sub = int(min(crop, ny // 2, nx // 2))
    if rotation and sub >= 128:
        for fx, fy in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)):
            sl = _box(img.shape, fx * (nx - 1), fy * (ny - 1), sub)
            got, _ = _measure_box(img, tmpl, m, tm, sl, max_lag, peaks)
            cy = (sl[0].start + sl[0].stop - 1) / 2.0
            cx = (sl[1].start + sl[1].stop - 1) / 2.0
            # a region far off the centre's offset found another peak (lag beyond the box, no overlap)
            if got is not None and got[2] >= MIN_PEAK and \
                    np.hypot(got[0] - dx, got[1] - dy) < 3.0 + 0.03 * np.hypot(cx - xc, cy - yc):
                regions.append((cx, cy, got[0], got[1], got[2]))
    theta = _fit_rotation(regions, xc, yc)
    reliable = peak >= MIN_PEAK
    fit = _by_stars(img, tmpl, m, tm, peaks, _coarse_model(dx, dy, theta, xc, yc)) if reliable else None
    if fit is None:
        return _correlation_offset(dx, dy, theta, peak, reliable, regions, structure, xc, yc)
    params, cov, n, rms, fwhm = fit
    if not rotation:
        params, cov = params[:2], cov[:2, :2]
    worst, worst_err = _corner_displacement(params, cov, img.shape)
    err = np.sqrt(np.diag(cov))
    rot = len(params) == 4
    angle = float(np.degrees(np.arctan2(params[3], 1.0 + params[2]))) if rot else 0.0
    return Offset(float(params[0]), float(params[1]), angle, peak, True,
                  worst, regions, structure, method="stars", n_stars=n, rms=rms,
                  error=(float(err[0]), float(err[1])), max_displacement_error=worst_err,
                  rotation_error=float(np.degrees(err[3])) if rot else 0.0,
                  scale=float(np.hypot(1.0 + params[2], params[3])) if rot else 1.0, fwhm=fwhm)


#: How to register a pair, named in the error.
ALIGN_HINT = "diffgui run --align, or Series > Align science to template in the window"


def check_alignment(image, template, mask=None, template_mask=None, *, max_shift: float = MAX_SHIFT,
                    log=None, hint: str = ALIGN_HINT) -> Offset:
    """Raise when the pair is not aligned to ``max_shift`` pixels anywhere.

    The pair counts as misaligned only when the largest displacement over the image
    exceeds ``max_shift`` by more than its uncertainty (``Offset.max_displacement_error``:
    the star fit's 1-sigma error, or ``XCORR_BIAS`` for a correlation-only measurement).

    Parameters
    ----------
    image, template, mask, template_mask :
        As for :func:`measure_offset`.
    max_shift : float
        Largest displacement (px) accepted anywhere in the image (default 0.3).
    log : callable, optional
        Receives one line with the measured offset.
    hint : str
        How to register the pair, named in the error.

    Returns
    -------
    Offset
        The measured offset (also when it could not be trusted: ``reliable`` False).

    Raises
    ------
    InputError
        ``'science is shifted by (3.20, -1.10) px relative to the template: register it
        first (...)'``.
    """
    off = measure_offset(image, template, mask, template_mask)
    if not off.reliable and off.structure >= MIN_STRUCTURE:
        raise InputError(f"science and template do not match: both show sources but their cross-correlation "
                         f"peak is only {off.peak:.2f} (shifted by more than about a third of the image, "
                         f"rotated, or not the same field): register the pair first ({hint}).")
    if not off.reliable:
        if log is not None:
            log(f"alignment not checked: the images have too little common structure "
                f"(correlation peak {off.peak:.2f})")
        return off
    if log is not None:
        log(f"alignment: science offset {off.describe()} relative to the template ({off.how()})")
    if off.max_displacement - off.max_displacement_error > max_shift:
        raise InputError(f"science is shifted by {off.describe()} relative to the template "
                         f"(up to {off.max_displacement:.2f} +- {off.max_displacement_error:.2f} px over the image, "
                         f"more than {max_shift:g} px; {off.how()}): register it first ({hint}).")
    return off
