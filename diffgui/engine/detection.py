"""Object detection with sep, returning an astropy Table.

Large images are processed in horizontal strips on all cores (sep releases
the GIL); each strip is padded by a margin and keeps only the objects whose
centre falls in its own rows, so the result does not depend on the split.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sep
from astropy.table import Table

from .errors import InputError, as_image, as_mask, as_noise
from .fft import resolve_threads
from .noise import Background, estimate_background

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

# sep's work buffers are process-wide; size them once for crowded 4k x 4k frames.
sep.set_extract_pixstack(4096 * 4096)
sep.set_sub_object_limit(4096)

_COLUMNS = ("x", "y", "xerr", "yerr", "flux", "fluxerr", "mag", "magerr", "fwhm", "a", "b",
            "theta", "flags", "peak", "bg", "npix")
_INT_COLUMNS = ("flags", "npix")

_STRIP_MIN_ROWS = 1024
_STRIP_MARGIN = 48


def empty_object_table() -> Table:
    """An object table with all columns and no rows."""
    return Table({c: np.zeros(0, dtype=np.int32 if c in _INT_COLUMNS else np.float64)
                  for c in _COLUMNS})


def _strips(ny, nthreads):
    n = max(1, min(nthreads, ny // _STRIP_MIN_ROWS))
    edges = np.linspace(0, ny, n + 1).astype(int)
    return [(edges[i], edges[i + 1]) for i in range(n)]


def _detect_strip(sub, sub_err, sub_mask, sub_raw, own, offset, params):
    """Detect on one strip; returns a dict of columns in full-image coordinates."""
    thresh, minarea, aper, saturation, gain, deblend_cont, filter_kernel, full_ny = params
    try:
        objs, seg = sep.extract(sub, thresh, err=sub_err, mask=sub_mask, minarea=minarea,
                                filter_kernel=filter_kernel, deblend_cont=deblend_cont,
                                segmentation_map=True)
    except Exception as exc:
        raise InputError(f"object detection failed: {exc}") from None
    y0, y1 = own
    yc = objs["y"] + offset
    keep = (yc >= y0 - 0.5) & (yc < y1 - 0.5)
    if y1 == y0:
        keep[:] = False
    objs = objs[keep]
    ids = np.nonzero(keep)[0] + 1
    n = len(objs)
    if n == 0:
        return None
    x = objs["x"].astype(np.float64)
    y = objs["y"].astype(np.float64)
    # Half-light radius -> FWHM (exact for a Gaussian: FWHM = 2 r_half).
    rmax = np.clip(6.0 * np.sqrt(np.maximum(objs["a"] * objs["b"], 0.25)), 3.0, 30.0)
    rhalf, rflag = sep.flux_radius(sub, x, y, rmax, 0.5, mask=sub_mask, subpix=5)
    fwhm = 2.0 * rhalf
    # Windowed centroids are far less noisy than isophotal barycentres.
    sig = np.clip(fwhm / 2.3548, 0.5, 10.0)
    xw, yw, wflag = sep.winpos(sub, x, y, sig, mask=sub_mask)
    good_w = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 2.0)
    x = np.where(good_w, xw, x)
    y = np.where(good_w, yw, y)
    r_ap = aper if aper is not None else np.clip(1.5 * np.nanmedian(fwhm[fwhm > 0]) if np.any(fwhm > 0) else 3.0, 2.0, 25.0)
    flux, fluxerr, aflag = sep.sum_circle(sub, x, y, r_ap, err=sub_err, mask=sub_mask,
                                          gain=gain, subpix=5)
    flags = np.zeros(n, dtype=np.int32)
    flags[(objs["flag"] & sep.OBJ_MERGED) != 0] |= FLAG_DEBLENDED
    flags[(aflag & (sep.APER_TRUNC | sep.APER_HASMASKED | sep.APER_ALLMASKED)) != 0] |= FLAG_APERTURE
    flags[(aflag & (sep.APER_HASMASKED | sep.APER_ALLMASKED)) != 0] |= FLAG_MASKED
    # Saturation and masks within the segmentation footprint.
    if saturation is not None or sub_mask is not None:
        labels = seg.ravel()
        sel = np.isin(labels, ids) if n < len(keep) else labels > 0
        lab = labels[sel]
        remap = np.zeros(len(keep) + 1, dtype=np.int64)
        remap[ids] = np.arange(n)
        idx = remap[lab]
        if saturation is not None:
            sat = sub_raw.ravel()[sel] >= saturation
            hit = np.zeros(n, dtype=bool)
            hit[idx[sat]] = True
            flags[hit] |= FLAG_SATURATED
        if sub_mask is not None:
            msk = sub_mask.ravel()[sel]
            hit = np.zeros(n, dtype=bool)
            hit[idx[msk]] = True
            flags[hit] |= FLAG_MASKED
    ny, nx = sub.shape
    border = (objs["xmin"] == 0) | (objs["xmax"] == nx - 1)
    border |= ((objs["ymin"] == 0) & (offset == 0)) | ((objs["ymax"] == ny - 1) & (offset + ny >= full_ny))
    flags[border] |= FLAG_EDGE
    xerr = np.sqrt(np.maximum(objs["errx2"], 0))
    yerr = np.sqrt(np.maximum(objs["erry2"], 0))
    return {
        "x": x, "y": y + offset, "xerr": xerr, "yerr": yerr,
        "flux": flux, "fluxerr": fluxerr,
        "fwhm": fwhm, "a": objs["a"].astype(float), "b": objs["b"].astype(float),
        "theta": objs["theta"].astype(float), "flags": flags,
        "peak": objs["peak"].astype(float), "npix": objs["npix"].astype(np.int32),
    }


def detect_objects(image, mask=None, err=None, thresh: float = 4.0, minarea: int = 5,
                   aper=None, gain=None, saturation=None, edge: float = 0,
                   background: Background | None = None, subtract_background: bool = True,
                   deblend_cont: float = 0.005, filter_fwhm: float | None = 1.5,
                   sn: float | None = None, nthreads: int = 0) -> Table:
    """Detect objects and measure them.

    Parameters
    ----------
    image : array_like
        2-D image (ADU). Big-endian and integer data are converted.
    mask : array_like of bool, optional
        True for bad pixels: excluded from detection and photometry, and
        flagged (0x100) on objects that touch them.
    err : array_like, optional
        Per-pixel noise (sigma). Default: the background RMS map.
    thresh : float
        Detection threshold in units of the noise (default 4).
    minarea : int
        Minimum number of connected pixels above threshold.
    aper : float, optional
        Photometry aperture radius in pixels; default 1.5 x median FWHM.
    gain : float, optional
        Gain (e-/ADU), adds the sources' Poisson noise to ``fluxerr``.
    saturation : float, optional
        Level (ADU, before background subtraction) at and above which an
        object is flagged saturated (0x4).
    edge : float
        Objects closer than this to the border are flagged (0x8).
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
    nthreads : int
        Threads for strip-parallel detection (0: all cores).

    Returns
    -------
    astropy.table.Table
        Columns x, y (0-based), xerr, yerr, flux, fluxerr, mag, magerr (from
        flux), fwhm, a, b, theta, flags, peak, bg, npix; brightest first.
        Empty (with all columns) when nothing is found.
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
    if subtract_background:
        if background is None:
            background = estimate_background(img, m)
        data = img - background.back
        bgmap = background.back
    else:
        data = img.copy()
        bgmap = None
    if bad.any():
        data[bad] = 0.0
    if err is None:
        if background is None:
            background = estimate_background(img, m)
        noise = background.rms
    else:
        noise = as_noise(err, img.shape, "err")
        noise = np.where(np.isfinite(noise) & (noise > 0), noise, np.inf)
    filter_kernel = None
    if filter_fwhm:
        s = filter_fwhm / 2.3548
        h = max(1, int(np.ceil(2.5 * s)))
        yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
        filter_kernel = np.exp(-(xx ** 2 + yy ** 2) / (2 * s * s))
    ny, nx = img.shape
    params = (float(thresh), int(minarea), aper, saturation, gain, float(deblend_cont),
              filter_kernel, ny)
    jobs = []
    for y0, y1 in _strips(ny, resolve_threads(nthreads)):
        a0, a1 = max(0, y0 - _STRIP_MARGIN), min(ny, y1 + _STRIP_MARGIN)
        sl = slice(a0, a1)
        jobs.append((np.ascontiguousarray(data[sl]), np.ascontiguousarray(noise[sl]),
                     None if m is None else np.ascontiguousarray(m[sl]),
                     img[sl], (y0, y1), a0, params))
    if len(jobs) == 1:
        parts = [_detect_strip(*jobs[0])]
    else:
        with ThreadPoolExecutor(len(jobs)) as pool:
            parts = list(pool.map(lambda j: _detect_strip(*j), jobs))
    parts = [p for p in parts if p is not None]
    if not parts:
        return empty_object_table()
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    x, y = cols["x"], cols["y"]
    if edge and edge > 0:
        near = (x < edge) | (y < edge) | (x > nx - 1 - edge) | (y > ny - 1 - edge)
        cols["flags"][near] |= FLAG_EDGE
    flux, fluxerr = cols["flux"], cols["fluxerr"]
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
        magerr = np.where(flux > 0, 2.5 / np.log(10) * fluxerr / flux, np.nan)
    cols["mag"] = mag
    cols["magerr"] = magerr
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    cols["bg"] = bgmap[iy, ix] if bgmap is not None else np.zeros(len(x))
    keep = np.isfinite(x) & np.isfinite(y)
    if sn is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            keep &= (flux > 0) & (flux / fluxerr > sn)
    order = np.argsort(-np.where(np.isfinite(flux), flux, -np.inf)[keep], kind="stable")
    table = Table({c: cols[c][keep][order] for c in _COLUMNS})
    table["flags"] = table["flags"].astype(np.int32)
    return table
