"""The stars a scorecard is measured on (:mod:`diffgui.engine.common.quality`).

:func:`prepare_stars` detects the template (and the science image) once per pair
with :func:`quick_catalogue` (2 x 2 binned detection: ~15 ms per 1024^2 image), splits
the template catalogue into disjoint *fit* and *score* halves by a hash of
each star's position, picks the bright, unsaturated, isolated stars of the score
half and marks the source-free pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from diffgui.engine.common.centroids import local_peaks
from diffgui.engine.errors import InputError, as_mask

__all__ = ["StarSets", "split_by_position", "quick_catalogue", "template_catalogue",
           "prepare_stars", "ISOLATION_LEVELS", "MIN_SCORE_STARS"]


@dataclass
class StarSets:
    """Template stars split into disjoint fit and score halves.

    Attributes
    ----------
    fit : astropy.table.Table
        Half of the whole template catalogue: pass it to a method as its
        object / stamp list.
    score : astropy.table.Table
        Bright, unsaturated, isolated stars of the other half (peak pixel
        columns ``px``, ``py``; ``meta['isolation']``: the (radius in FWHM,
        neighbour flux fraction) used, looser in crowded fields, see
        :data:`ISOLATION_LEVELS`).
    source_free : ndarray of bool
        True where no detected object (of either image) lies.
    fwhm : float
        Median template FWHM of the scored stars (pixels).
    n_catalogue : int
        Objects in the template catalogue.
    image_fwhm : float or None
        Median science FWHM of the detected objects (pixels).
    """

    fit: object
    score: object
    source_free: np.ndarray
    fwhm: float
    n_catalogue: int
    image_fwhm: Optional[float] = None


def split_by_position(x, y) -> np.ndarray:
    """Deterministic halves: True for the *score* half, from a hash of the 4-px cell of a position.

    Repeated calls give the same halves, a star measured a little differently
    (another catalogue of the pair) nearly always lands in the same half, and the
    halves interleave across the field (each half samples every region).
    """
    ix = np.floor(np.asarray(x, dtype=float) / 4.0).astype(np.int64) & 0xFFFFF
    iy = np.floor(np.asarray(y, dtype=float) / 4.0).astype(np.int64) & 0xFFFFF
    h = (ix.astype(np.uint64) * np.uint64(2654435761)) ^ (iy.astype(np.uint64) * np.uint64(40503))
    h ^= h >> np.uint64(13)
    return ((h * np.uint64(0x9E3779B1)) >> np.uint64(7)) & np.uint64(1) == 1


def _disk_mask(shape, x, y, radii) -> np.ndarray:
    """True inside disks of the given radii (all disks of one integer radius painted at once)."""
    out = np.zeros(shape, dtype=bool)
    h, w = shape
    cx = np.rint(np.asarray(x, float)).astype(np.int64)
    cy = np.rint(np.asarray(y, float)).astype(np.int64)
    rr = np.ceil(np.asarray(radii, float)).astype(np.int64)
    flat = out.reshape(-1)
    for r in np.unique(rr):
        sel = rr == r
        dy, dx = np.nonzero(np.add.outer(np.arange(-r, r + 1) ** 2, np.arange(-r, r + 1) ** 2) <= r * r)
        py = cy[sel, None] + (dy - r)[None, :]
        px = cx[sel, None] + (dx - r)[None, :]
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        flat[py[ok] * w + px[ok]] = True
    return out


def _exclusion_radii(objs, fwhm) -> np.ndarray:
    """Masking radius per object: grows with its S/N, so bright wings are excluded."""
    sn = np.asarray(objs["flux"], float) / np.maximum(np.asarray(objs["fluxerr"], float), 1e-30)
    sn = np.clip(np.nan_to_num(sn, nan=1.0), 1.0, 1e6)
    return fwhm * (1.5 + 0.75 * np.log10(sn))


#: Isolation levels tried in turn (no neighbour brighter than ``frac`` x the star within
#: ``radius`` x FWHM) until enough stars are left: crowded fields get the looser ones.
ISOLATION_LEVELS = ((3.0, 0.05), (2.0, 0.2), (1.5, 0.5))
MIN_SCORE_STARS = 20
#: Objects broader than this x the median FWHM are not scored (unresolved blends, galaxies).
BLEND_FWHM = 1.5


def _select_score(objs, fwhm, shape, sn_min, saturation, margin, radius=3.0, frac=0.05):
    """Bright, unsaturated, unflagged, isolated objects away from the edges."""
    x, y = np.asarray(objs["x"], float), np.asarray(objs["y"], float)
    flux = np.asarray(objs["flux"], float)
    sn = flux / np.maximum(np.asarray(objs["fluxerr"], float), 1e-30)
    keep = (sn >= sn_min) & ((np.asarray(objs["flags"], int) & 0x11E) == 0)
    if saturation is not None:
        keep &= (np.asarray(objs["peak"], float) + np.asarray(objs["bg"], float)) < 0.8 * saturation
    h, w = shape
    keep &= (x >= margin) & (x < w - margin) & (y >= margin) & (y < h - margin)
    if "fwhm" in objs.colnames:  # blends closer than the catalogue separates are broad
        ofw = np.asarray(objs["fwhm"], float)
        keep &= ~(ofw > BLEND_FWHM * fwhm)
    if keep.any() and len(x) > 1:
        from scipy.spatial import cKDTree

        pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius * fwhm, output_type="ndarray")
        if len(pairs):
            i, j = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
            crowded = np.zeros(len(x), bool)
            crowded[i[flux[j] > frac * flux[i]]] = True
            keep &= ~crowded
    return keep


# --- the scorecard's own catalogue: cheap detection on a 2 x 2 binned image -------------
# Detecting with diffgui.engine.common.detection at full resolution costs ~0.2 s of CPU per
# 1024^2 image (sep's extraction, windowed centroids and half-light radii of every object),
# more than the scorecard may cost (< 10 % of a run). The scorecard needs positions, fluxes
# and S/N (to mask sources and pick bright stars), peaks (saturation), a FWHM and flags:
# local maxima of the matched-filtered, 2 x 2 binned significance give them in ~15 ms.

_FLAG_DEBLENDED, _FLAG_SATURATED, _FLAG_EDGE, _FLAG_APERTURE, _FLAG_MASKED = 0x2, 0x4, 0x8, 0x10, 0x100
#: Peaks count above this x ``thresh`` sigma of the smoothed binned noise: with ``thresh`` 3,
#: no false detection per megapixel of pure noise, as detect_objects at 3 sigma (measured:
#: 9 at a factor 1.33, 302 at 1).
PEAK_THRESHOLD_SCALE = 1.5
#: Peaks sharing a region above this x ``thresh`` (smoothed binned sigma) are blends (0x2).
BLEND_LEVEL = 5.0
_CAT_COLUMNS = ("x", "y", "flux", "fluxerr", "fwhm", "flags", "peak", "bg")
_FWHM_STARS = 200  # brightest unflagged objects whose half-light radius is measured
RHALF_RMAX = 2.0  # half-light radii within this x the half-maximum FWHM (crowded fields: less neighbour light)


def _binned(a, bad):
    """2 x 2 sums (float32, bad pixels as 0) and the binned bad mask (any of the 4 bad); an
    odd last row or column is left out."""
    h, w = a.shape
    a, bad = a[:h - h % 2, :w - w % 2], bad[:h - h % 2, :w - w % 2]
    data = a.astype(np.float32)
    if bad.any():
        data[bad] = 0.0
    b = data[0::2, 0::2] + data[1::2, 0::2]
    b += data[0::2, 1::2]
    b += data[1::2, 1::2]
    bb = bad[0::2, 0::2] | bad[1::2, 0::2]
    bb |= bad[0::2, 1::2]
    bb |= bad[1::2, 1::2]
    return b, bb


def _matched_peaks(sig, thresh):
    """Local maxima (3 x 3) of ``sig`` smoothed by a 3 x 3 binomial kernel, in units of the
    smoothed noise (white noise in: unit variance out), above ``thresh`` and off the border,
    in raster order: (rows, cols, the smoothed map)."""
    p = np.pad(sig, 1)
    r = p[:-2] + 2.0 * p[1:-1] + p[2:]
    s = r[:, :-2] + 2.0 * r[:, 1:-1] + r[:, 2:]
    s *= 1.0 / 6.0  # weights sum to 16, their root sum of squares is 6
    yy, xx, _ = local_peaks(s, thresh)
    h, w = s.shape
    inner = (yy > 0) & (yy < h - 1) & (xx > 0) & (xx < w - 1)
    order = np.argsort(yy[inner] * w + xx[inner], kind="stable")
    return yy[inner][order], xx[inner][order], s


def _blended(s, yb, xb, level):
    """True for peaks that share a connected region of ``s > level`` with another peak (the
    objects sep would deblend: flagged 0x2 and not scored, as detect_objects' children)."""
    from scipy import ndimage

    labels, _ = ndimage.label(s > level)
    lab = labels[yb, xb]
    counts = np.bincount(lab)
    return (lab > 0) & (counts[lab] > 1)


def _stamps(a, iy, ix, r):
    """``(n, 2r+1, 2r+1)`` stamps of ``a`` around integer centres (clipped at the borders)."""
    h, w = a.shape
    off = np.arange(-r, r + 1)
    yy = np.clip(iy[:, None] + off[None, :], 0, h - 1)
    xx = np.clip(ix[:, None] + off[None, :], 0, w - 1)
    return a[yy[:, :, None], xx[:, None, :]]


def _peak_positions(a, bad, yb, xb, bg):
    """The brightest full-resolution pixel of each binned peak and a 3 x 3 centroid around it."""
    n = yb.size
    raw = np.where(bad, -np.inf, a) if bad.any() else a
    k = np.argmax(_stamps(raw, 2 * yb, 2 * xb, 1)[:, 1:, 1:].reshape(n, 4), axis=1)
    py, px = 2 * yb + k // 2, 2 * xb + k % 2
    st = _stamps(a, py, px, 1).astype(float) - bg[:, None, None]
    st = np.where(np.isfinite(st), np.maximum(st, 0.0), 0.0)
    return px + _log_parabola(st.sum(axis=1)), py + _log_parabola(st.sum(axis=2)), py, px


def _log_parabola(prof):
    """Sub-pixel offset of the peak of 3-point profiles (n, 3): the vertex of a parabola
    through their logarithms (exact for a Gaussian); the centroid where a value is not
    positive or the vertex is not within half a pixel."""
    tot = prof.sum(axis=1)
    cen = np.where(tot > 0, (prof[:, 2] - prof[:, 0]) / np.where(tot > 0, tot, 1.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lg = np.log(prof)
        curv = lg[:, 0] - 2.0 * lg[:, 1] + lg[:, 2]
        vertex = 0.5 * (lg[:, 0] - lg[:, 2]) / curv
    ok = np.isfinite(vertex) & (curv < 0) & (np.abs(vertex) <= 0.5)
    return np.where(ok, vertex, cen)


def _fwhm_column(a, bad, back, x, y, flux, peak, flags, aper):
    """FWHM of every object: twice the half-light radius (sep, full resolution, within
    2.5 x the half-maximum FWHM of the brightest stars, as detect_objects' ~6 sigma) for the
    brightest unflagged objects; for the others the Gaussian FWHM of their peak-to-flux
    ratio, scaled to the measured ones (one scale for the column)."""
    import sep

    with np.errstate(invalid="ignore", divide="ignore"):
        geq = 2.3548 * np.sqrt(flux / (2.0 * np.pi * peak))
    geq = np.where(np.isfinite(geq) & (peak > 0) & (flux > 0), geq, np.nan)
    top = np.flatnonzero((flags == 0) & np.isfinite(geq))
    top = top[np.argsort(-flux[top], kind="stable")][:_FWHM_STARS]
    if top.size == 0:
        return geq
    full = _minus_binned(a, back * np.float32(0.25))
    if bad.any():
        full[bad] = 0.0
    # half-maximum width first: insensitive to wings, neighbours and the background level
    r = int(np.clip(np.ceil(aper), 4, 15))
    st = _stamps(full, np.rint(y[top]).astype(int), np.rint(x[top]).astype(int), r)
    top_peak = st[:, r - 1:r + 2, r - 1:r + 2].reshape(top.size, 9).max(axis=1)
    yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
    area = np.count_nonzero((st > 0.5 * top_peak[:, None, None]) & (xx * xx + yy * yy <= r * r),
                            axis=(1, 2))
    half_max = float(np.median(2.0 * np.sqrt(area / np.pi)))
    rmax = np.full(top.size, float(np.clip(RHALF_RMAX * half_max, 3.0, 30.0)))
    rhalf, _ = sep.flux_radius(full, x[top], y[top], rmax, 0.5, mask=bad if bad.any() else None,
                               subpix=1)
    out = geq.copy()
    good = np.isfinite(rhalf) & (rhalf > 0.25)
    if good.any():
        out *= np.median(2.0 * rhalf[good] / geq[top][good])
        out[top[good]] = 2.0 * rhalf[good]
    return out


def _minus_binned(a, m):
    """``a`` (float32) minus the 2 x 2 binned map ``m`` taken at full resolution (an odd last
    row or column uses its neighbour's value)."""
    h, w = a.shape
    hb, wb = m.shape
    out = np.empty((h, w), np.float32)
    np.subtract(a[:2 * hb, :2 * wb].reshape(hb, 2, wb, 2), m[:, None, :, None],
                out=out[:2 * hb, :2 * wb].reshape(hb, 2, wb, 2), casting="unsafe")
    if h > 2 * hb:
        out[-1, :2 * wb] = a[-1, :2 * wb] - np.repeat(m[-1], 2)
    if w > 2 * wb:
        out[:2 * hb, -1] = a[:2 * hb, -1] - np.repeat(m[:, -1], 2)
    if h > 2 * hb and w > 2 * wb:
        out[-1, -1] = a[-1, -1] - m[-1, -1]
    return out


def quick_catalogue(image, mask=None, *, thresh: float = 3.0, saturation=None):
    """The scorecard's catalogue: objects above ``thresh`` sigma, found on a 2 x 2 binned image.

    Local maxima of the binned significance (background and its rms from sep on the
    binned image) smoothed by a 3 x 3 binomial filter (a matched filter for FWHM ~3-6 px);
    positions: 3 x 3 centroid around the brightest full-resolution pixel; fluxes: circular
    apertures of radius 1.5 FWHM on the binned image (the same flux scale as the full
    image); ``fwhm``: see :func:`_fwhm_column`. Close blends (under ~4 px) are one object.

    Parameters
    ----------
    image : ndarray
        2-D image (float32 or float64; not copied to float64).
    mask : ndarray of bool, optional
        Bad pixels (non-finite pixels are bad too).
    thresh : float
        Detection threshold, on the scale of :func:`~diffgui.engine.common.detection.detect_objects`:
        peaks above :data:`PEAK_THRESHOLD_SCALE` x ``thresh`` sigma of the smoothed binned noise.
    saturation : float, optional
        Objects with a pixel of their 3 x 3 peak at or above it are flagged 0x4.

    Returns
    -------
    astropy.table.Table
        Columns x, y (0-based), flux, fluxerr, fwhm, flags (0x4 saturated, 0x8 at the
        border, 0x10 aperture truncated, 0x100 masked pixels in the aperture), peak (above
        the background), bg; brightest first; no rows when nothing is found.
    """
    import sep
    from astropy.table import Table

    a = np.asarray(image)
    if a.ndim != 2 or min(a.shape) < 8:
        raise InputError(f"an image of shape {a.shape} is too small to find stars in")
    bad = ~np.isfinite(a)
    if mask is not None:
        bad |= mask
    b, bb = _binned(a, bad)
    box = int(min(32, *b.shape))
    bkg = sep.Background(b, mask=bb, bw=box, bh=box, fw=3, fh=3)
    back, rms = bkg.back(), bkg.rms()
    data = b - back
    sig = np.zeros_like(data)
    np.divide(data, rms, out=sig, where=(rms > 0) & ~bb)
    yb, xb, smooth = _matched_peaks(sig, PEAK_THRESHOLD_SCALE * float(thresh))
    if yb.size == 0:
        return Table({c: np.zeros(0, dtype=np.int32 if c == "flags" else float) for c in _CAT_COLUMNS})
    bg = back[yb, xb].astype(float) / 4.0
    x, y, py, px = _peak_positions(a, bad, yb, xb, bg)
    peak = a[py, px].astype(float) - bg
    hb, wb = b.shape
    flags = np.where((yb == 0) | (xb == 0) | (yb == hb - 1) | (xb == wb - 1), _FLAG_EDGE, 0)
    flags = flags | np.where(_blended(smooth, yb, xb, BLEND_LEVEL * float(thresh)), _FLAG_DEBLENDED, 0)
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            sat = np.nanmax(_stamps(a, py, px, 1).reshape(yb.size, 9), axis=1) >= saturation
        flags = flags | np.where(sat, _FLAG_SATURATED, 0)
    # aperture radius 1.5 FWHM as in detect_objects; first FWHM guess from the peaks
    with np.errstate(invalid="ignore", divide="ignore"):
        ap0 = sep.sum_circle(data, (x - 0.5) / 2, (y - 0.5) / 2, 2.5, mask=bb, subpix=0)[0]
        g0 = 2.3548 * np.sqrt(ap0 / (2.0 * np.pi * peak))
    ok = np.flatnonzero(np.isfinite(g0) & (peak > 0) & (flags == 0))
    ok = ok[np.argsort(-ap0[ok], kind="stable")][:_FWHM_STARS]
    aper = float(np.clip(1.5 * np.median(g0[ok]), 2.0, 25.0)) if ok.size else 3.0
    flux, fluxerr, aflag = sep.sum_circle(data, (x - 0.5) / 2, (y - 0.5) / 2, aper / 2, err=rms,
                                          mask=bb, subpix=5)
    flags = flags | np.where((aflag & (sep.APER_TRUNC | sep.APER_HASMASKED | sep.APER_ALLMASKED)) != 0,
                             _FLAG_APERTURE, 0)
    flags = flags | np.where((aflag & (sep.APER_HASMASKED | sep.APER_ALLMASKED)) != 0, _FLAG_MASKED, 0)
    flags = flags.astype(np.int32)
    fwhm = _fwhm_column(a, bad, back, x, y, flux, peak, flags, aper)
    order = np.argsort(-np.where(np.isfinite(flux), flux, -np.inf), kind="stable")
    cols = dict(x=x, y=y, flux=flux, fluxerr=fluxerr, fwhm=fwhm, flags=flags, peak=peak, bg=bg)
    return Table({c: np.asarray(cols[c])[order] for c in _CAT_COLUMNS})


def template_catalogue(template, template_mask=None, *, thresh: float = 3.0, saturation=None):
    """The template catalogue :func:`prepare_stars` uses (:func:`quick_catalogue`)."""
    return quick_catalogue(template, template_mask, thresh=thresh, saturation=saturation)


def prepare_stars(image, template, mask=None, template_mask=None, *, sn_min: float = 30.0,
                  saturation=None, thresh: float = 3.0, margin: Optional[float] = None,
                  fwhm: Optional[float] = None, template_objects=None,
                  image_catalogue: bool = True) -> StarSets:
    """Detect the stars of a pair once and split them into fit and score halves.

    Parameters
    ----------
    image, template : ndarray
        Aligned science and template images.
    mask, template_mask : ndarray of bool, optional
        Bad pixels (True).
    sn_min : float
        Minimum template S/N of a scored star.
    saturation : float, optional
        Stars whose template peak exceeds 80 % of it are not scored.
    thresh : float
        Detection threshold (sigma) of the catalogues used for masking sources.
    margin : float, optional
        Distance from the edges of scored stars; default 4 x FWHM + 5.
    fwhm : float, optional
        Template FWHM; default the median of the detected stars.
    template_objects : astropy.table.Table, optional
        The template catalogue from :func:`template_catalogue` with the same
        ``thresh`` and ``saturation`` (a series with one template detects it once).
    image_catalogue : bool
        Also detect the science image, to exclude its own sources (transients,
        variables) from the source-free pixels and to measure ``image_fwhm``;
        False halves the cost (batch runs), the template's sources are excluded
        either way.

    Returns
    -------
    StarSets

    Raises
    ------
    InputError
        Images of different shapes, or no stars in the template.
    """
    image = _as_2d(image, "image")  # float32 stays float32: no full-frame float64 copies
    template = _as_2d(template, "template")
    if image.shape != template.shape:
        raise InputError(f"image {image.shape} and template {template.shape} differ in shape")
    mask = as_mask(mask, image.shape, "mask")
    template_mask = as_mask(template_mask, image.shape, "template_mask")
    tobj = (template_catalogue(template, template_mask, thresh=thresh, saturation=saturation)
            if template_objects is None else template_objects)
    if len(tobj) == 0:
        raise InputError("no stars detected in the template: nothing to score the subtraction on")
    iobj = quick_catalogue(image, mask, thresh=thresh, saturation=saturation) if image_catalogue else []
    if fwhm is None:
        fwhm = _median_fwhm(tobj) or 3.0
    bad = np.zeros(image.shape, bool)
    for objs in (tobj, iobj):
        if len(objs):
            bad |= _disk_mask(image.shape, objs["x"], objs["y"], _exclusion_radii(objs, fwhm))
    for m in (mask, template_mask):
        if m is not None:
            bad |= m
    score_half = split_by_position(tobj["x"], tobj["y"])
    margin = 4.0 * fwhm + 5.0 if margin is None else float(margin)
    for radius, frac in ISOLATION_LEVELS:
        keep = score_half & _select_score(tobj, fwhm, image.shape, sn_min, saturation, margin,
                                          radius, frac)
        if keep.sum() >= MIN_SCORE_STARS:
            break
    score = tobj[keep]
    score.meta["isolation"] = (radius, frac)
    _add_peak_pixels(score, template)
    return StarSets(fit=tobj[~score_half], score=score, source_free=~bad, fwhm=fwhm,
                    n_catalogue=len(tobj), image_fwhm=_median_fwhm(iobj) if len(iobj) else None)


def _median_fwhm(objs) -> Optional[float]:
    """Median FWHM of the unflagged objects with S/N >= 10 (of all objects when under 5)."""
    fw = np.asarray(objs["fwhm"], float)
    ok = np.isfinite(fw) & (fw > 0.5)
    sn = np.asarray(objs["flux"], float) / np.maximum(np.asarray(objs["fluxerr"], float), 1e-30)
    bright = ok & (sn >= 10) & (np.asarray(objs["flags"], int) == 0)
    fw = fw[bright] if bright.sum() >= 5 else fw[ok]
    return float(np.median(fw)) if fw.size else None


def _as_2d(a, name) -> np.ndarray:
    """``a`` as a non-empty 2-D real array, without converting float32 to float64."""
    a = np.asarray(a)
    if a.ndim != 2 or a.size == 0 or not (np.issubdtype(a.dtype, np.floating)
                                          or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must be a non-empty 2-D numeric image, got {a.dtype} {a.shape}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def _add_peak_pixels(stars, template) -> None:
    """Columns ``px, py``: the brightest template pixel within 1 px of each star."""
    h, w = template.shape
    ix = np.clip(np.rint(np.asarray(stars["x"], float)).astype(int), 1, w - 2)
    iy = np.clip(np.rint(np.asarray(stars["y"], float)).astype(int), 1, h - 2)
    off = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    vals = template[iy[:, None] + off[None, :, 0], ix[:, None] + off[None, :, 1]]
    best = np.argmax(np.nan_to_num(vals, nan=-np.inf), axis=1) if len(ix) else np.zeros(0, int)
    stars["px"] = ix + off[best, 1]
    stars["py"] = iy + off[best, 0]
