"""Object detection with sep, returning an astropy Table.

Detection runs on the significance image ``(image - background) / noise``
with a unit threshold scale, which is the per-pixel threshold
``thresh * noise`` without sep's slower per-pixel error path. Positions are
refined with windowed centroids, sizes come from the half-light radius, and
photometry uses circular apertures with the real noise map.
"""

from __future__ import annotations

import numpy as np
import sep
from astropy.table import Table

from diffgui.engine.errors import InputError, as_image, as_mask, as_noise
from diffgui.engine.common.noise import Background, estimate_background

__all__ = [
    "detect_objects",
    "empty_object_table",
    "FLAG_DEBLENDED",
    "FLAG_SATURATED",
    "FLAG_EDGE",
    "FLAG_APERTURE",
    "FLAG_MASKED",
]

#: The object was split from a blend (sep's OBJ_MERGED).
FLAG_DEBLENDED = 0x2
#: A pixel of the object reaches the saturation level.
FLAG_SATURATED = 0x4
#: The object is within the edge margin or touches the image border.
FLAG_EDGE = 0x8
#: The photometry aperture is truncated by the border or hits masked pixels.
FLAG_APERTURE = 0x10
#: Masked pixels lie within the object's footprint (stdpipe's 0x100).
FLAG_MASKED = 0x100

# sep's work buffers are process-wide and allocated on every call, so their size
# costs time on every image: a million pixels of objects in progress suffices for
# crowded 4k x 4k frames (measured), and _extract grows it when a frame needs more.
_PIXSTACK = 1_000_000
sep.set_extract_pixstack(_PIXSTACK)
sep.set_sub_object_limit(4096)


def _extract(signif, thresh, **kwargs):
    """sep.extract, growing the pixel stack when a crowded frame overflows it."""
    while True:
        try:
            return sep.extract(signif, thresh, **kwargs)
        except Exception as exc:
            stack = sep.get_extract_pixstack()
            if "pixel buffer full" in str(exc) and stack < signif.size:
                sep.set_extract_pixstack(min(signif.size, 4 * stack))
                continue
            raise InputError(f"object detection failed: {exc}") from None

_COLUMNS = ("x", "y", "xerr", "yerr", "flux", "fluxerr", "mag", "magerr", "fwhm", "a", "b",
            "theta", "flags", "peak", "bg", "npix")
_INT_COLUMNS = ("flags", "npix")


def empty_object_table() -> Table:
    """An object table with all columns and no rows."""
    return Table({c: np.zeros(0, dtype=np.int32 if c in _INT_COLUMNS else np.float64)
                  for c in _COLUMNS})


def _footprint_flags(objs, raw, mask, saturation):
    """Saturated / masked pixels inside each object's bounding box."""
    flags = np.zeros(len(objs), dtype=np.int32)
    if saturation is None and mask is None:
        return flags
    boxes = zip(objs["xmin"], objs["xmax"], objs["ymin"], objs["ymax"])
    for i, (x0, x1, y0, y1) in enumerate(boxes):
        if saturation is not None and raw[y0:y1 + 1, x0:x1 + 1].max() >= saturation:
            flags[i] |= FLAG_SATURATED
        if mask is not None and mask[y0:y1 + 1, x0:x1 + 1].any():
            flags[i] |= FLAG_MASKED
    return flags


def _gaussian_filter_kernel(fwhm):
    s = fwhm / 2.3548
    h = max(1, int(np.ceil(2.5 * s)))
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    return np.exp(-(xx ** 2 + yy ** 2) / (2 * s * s))


def detect_objects(image, mask=None, err=None, thresh: float = 4.0, minarea: int = 5,
                   aper=None, gain=None, saturation=None, edge: float = 0,
                   background: Background | None = None, subtract_background: bool = True,
                   deblend_cont: float = 0.005, filter_fwhm: float | None = 1.5,
                   sn: float | None = None) -> Table:
    """Detect objects and measure them.

    Parameters
    ----------
    image : array_like
        2-D image (ADU). Big-endian and integer data are converted.
    mask : array_like of bool, optional
        True for bad pixels: excluded from detection and photometry, and
        flagged (0x100) on objects that touch them.
    err : array_like, optional
        Per-pixel noise (sigma) used for the threshold and the flux errors.
        Default: the background RMS map.
    thresh : float
        Detection threshold in units of the noise (default 4).
    minarea : int
        Minimum number of connected pixels above threshold.
    aper : float, optional
        Photometry aperture radius in pixels; default 1.5 x median FWHM.
    gain : float, optional
        Gain (e-/ADU); adds the sources' Poisson noise to ``fluxerr`` when no
        ``err`` map is given.
    saturation : float, optional
        Level (ADU, before background subtraction) at and above which an
        object is flagged saturated (0x4).
    edge : float
        Objects closer than this to the border are flagged (0x8); objects
        touching the border always are.
    background : Background, optional
        A background model already estimated for this image.
    subtract_background : bool
        Subtract the background before detecting (default True). Pass
        False for images that are already background-subtracted, such as
        differences.
    deblend_cont : float
        sep's deblending contrast (1.0 disables deblending).
    filter_fwhm : float or None
        FWHM of the Gaussian detection filter; None disables filtering.
    sn : float, optional
        Keep only objects with flux/fluxerr above this.

    Returns
    -------
    astropy.table.Table
        Columns x, y (0-based pixel centres), xerr, yerr, flux, fluxerr, mag,
        magerr (instrumental, from flux), fwhm, a, b, theta, flags, peak, bg,
        npix; brightest first. Empty (with all columns) when nothing is found.
    """
    img = as_image(image, "image")
    m = as_mask(mask, img.shape, "mask")
    bad = ~np.isfinite(img)
    if bad.any():
        m = bad if m is None else (m | bad)
    if m is not None and m.all():
        raise InputError("every pixel of the image is masked: nothing to detect on.")
    if thresh is None or not np.isfinite(thresh) or thresh <= 0:
        raise InputError(f"detection threshold must be positive, got {thresh!r}")
    need_bg = subtract_background or err is None
    if need_bg and background is None:
        background = estimate_background(img, m)
    data = img - background.back if subtract_background else img.copy()
    if bad.any():
        data[bad] = 0.0
    if err is None:
        noise = background.rms
    else:
        noise = as_noise(err, img.shape, "err")
        gain = None  # an explicit noise map already holds the source term
    signif, phot_err = _significance(data, noise, m, err is not None or not (background.rms > 0).all())
    filter_kernel = _gaussian_filter_kernel(filter_fwhm) if filter_fwhm else None
    sep_mask = None if m is None else np.ascontiguousarray(m)
    objs = _extract(signif, float(thresh), err=1.0, mask=sep_mask, minarea=int(minarea),
                    filter_kernel=filter_kernel, deblend_cont=float(deblend_cont))
    if len(objs) == 0:
        return empty_object_table()
    x, y, fwhm = _positions_and_fwhm(data, objs, sep_mask)
    if aper is None:
        ok = np.isfinite(fwhm) & (fwhm > 0)
        aper = float(np.clip(1.5 * np.median(fwhm[ok]), 2.0, 25.0)) if ok.any() else 3.0
    flux, fluxerr, aflag = sep.sum_circle(data, x, y, aper, err=phot_err, mask=sep_mask,
                                          gain=gain, subpix=5)
    flags = _object_flags(objs, img, m, saturation, aflag, x, y, edge)
    return _object_table(objs, x, y, flux, fluxerr, fwhm, flags, noise, img.shape,
                         background.back if subtract_background else None, sn)


def _significance(data, noise, m, check_noise):
    """``data / noise`` as float32 (0 where unusable) and the photometric error map.

    ``check_noise``: the noise may be non-positive or non-finite somewhere.
    """
    # Each full-frame pass costs ~50 ms at 4096^2: build the usable map only
    # when the noise or the mask can exclude something.
    usable = None
    if check_noise:
        usable = np.isfinite(noise) & (noise > 0)
    if m is not None:
        usable = ~m if usable is None else (usable & ~m)
    if usable is not None and not usable.any():
        raise InputError("no pixel has a usable noise value: nothing to detect on.")
    # float32 halves the memory traffic of the largest temporary; sep
    # thresholds it exactly as well.
    signif = np.zeros(data.shape, dtype=np.float32)
    np.divide(data, noise, out=signif, where=True if usable is None else usable,
              casting="same_kind")
    phot_err = noise if usable is None else np.where(usable, noise, 0.0)
    return signif, phot_err


def _positions_and_fwhm(data, objs, sep_mask):
    """Windowed centroids (isophotal where windowing fails) and FWHM from the
    half-light radius."""
    x = objs["x"].astype(np.float64)
    y = objs["y"].astype(np.float64)
    # Half-light radius -> FWHM (exact for a Gaussian: FWHM = 2 r_half).
    rmax = np.clip(6.0 * np.sqrt(np.maximum(objs["a"] * objs["b"], 0.25)), 3.0, 30.0)
    # subpix=1 (exact pixel sums) is both faster and closer to the true FWHM here.
    rhalf, _ = sep.flux_radius(data, x, y, rmax, 0.5, mask=sep_mask, subpix=1)
    fwhm = 2.0 * rhalf
    # Windowed centroids are far less noisy than isophotal barycentres.
    sig = np.clip(np.where(np.isfinite(fwhm), fwhm, 2.0) / 2.3548, 0.5, 10.0)
    xw, yw, wflag = sep.winpos(data, x, y, sig, mask=sep_mask)
    good_w = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 2.0)
    x = np.where(good_w, xw, x)
    y = np.where(good_w, yw, y)
    return x, y, fwhm


def _object_flags(objs, img, m, saturation, aflag, x, y, edge):
    """Flags: footprint (saturated, masked), deblended, aperture problems, edge."""
    ny, nx = img.shape
    flags = _footprint_flags(objs, img, m, saturation)
    flags[(objs["flag"] & sep.OBJ_MERGED) != 0] |= FLAG_DEBLENDED
    flags[(aflag & (sep.APER_TRUNC | sep.APER_HASMASKED | sep.APER_ALLMASKED)) != 0] |= FLAG_APERTURE
    flags[(aflag & (sep.APER_HASMASKED | sep.APER_ALLMASKED)) != 0] |= FLAG_MASKED
    border = (objs["xmin"] == 0) | (objs["xmax"] == nx - 1) | (objs["ymin"] == 0) | (objs["ymax"] == ny - 1)
    if edge and edge > 0:
        border |= (x < edge) | (y < edge) | (x > nx - 1 - edge) | (y > ny - 1 - edge)
    flags[border] |= FLAG_EDGE
    return flags


def _object_table(objs, x, y, flux, fluxerr, fwhm, flags, noise, shape, back, sn):
    """The detection table, brightest first (``back``: background map, or None)."""
    n = len(objs)
    ny, nx = shape
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = flux > 0
        mag = np.where(positive, -2.5 * np.log10(np.where(positive, flux, 1.0)), np.nan)
        magerr = np.where(positive, 2.5 / np.log(10) * fluxerr / np.where(positive, flux, 1.0), np.nan)
        peak = objs["peak"] * noise[np.clip(objs["ypeak"], 0, ny - 1), np.clip(objs["xpeak"], 0, nx - 1)]
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    cols = {
        "x": x, "y": y,
        "xerr": np.sqrt(np.maximum(objs["errx2"], 0)), "yerr": np.sqrt(np.maximum(objs["erry2"], 0)),
        "flux": flux, "fluxerr": fluxerr, "mag": mag, "magerr": magerr, "fwhm": fwhm,
        "a": objs["a"].astype(float), "b": objs["b"].astype(float), "theta": objs["theta"].astype(float),
        "flags": flags, "peak": peak,
        "bg": back[iy, ix] if back is not None else np.zeros(n),
        "npix": objs["npix"].astype(np.int32),
    }
    keep = np.isfinite(x) & np.isfinite(y)
    if sn is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            keep &= (flux > 0) & (flux / fluxerr > sn)
    order = np.argsort(-np.where(np.isfinite(flux), flux, -np.inf)[keep], kind="stable")
    return Table({c: np.asarray(cols[c])[keep][order] for c in _COLUMNS})
