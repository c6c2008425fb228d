"""The stars a scorecard is measured on (:mod:`diffgui.engine.common.quality`).

:func:`prepare_stars` detects the template (and the science image) once per pair,
splits the template catalogue into disjoint *fit* and *score* halves by a hash of
each star's position, picks the bright, unsaturated, isolated stars of the score
half and marks the source-free pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from diffgui.engine.errors import InputError, as_image, as_mask

__all__ = ["StarSets", "split_by_position", "template_catalogue", "prepare_stars",
           "ISOLATION_LEVELS", "MIN_SCORE_STARS"]


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
    """True inside disks of the given radii (painted one small box per object)."""
    out = np.zeros(shape, dtype=bool)
    h, w = shape
    for xi, yi, r in zip(x, y, radii):
        r = int(math.ceil(r))
        cx, cy = int(round(xi)), int(round(yi))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0 - cy:y1 - cy, x0 - cx:x1 - cx]
        out[y0:y1, x0:x1] |= xx * xx + yy * yy <= r * r
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
    if keep.any() and len(x) > 1:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.column_stack([x, y]))
        for i in np.flatnonzero(keep):
            near = tree.query_ball_point((x[i], y[i]), radius * fwhm)
            if any(j != i and flux[j] > frac * flux[i] for j in near):
                keep[i] = False
    return keep


def template_catalogue(template, template_mask=None, *, thresh: float = 3.0, saturation=None):
    """The template catalogue :func:`prepare_stars` uses (objects above ``thresh`` sigma)."""
    from diffgui.engine.common.detection import detect_objects

    template = as_image(template, "template")
    template_mask = as_mask(template_mask, template.shape, "template_mask")
    return detect_objects(template, mask=template_mask, thresh=thresh, saturation=saturation)


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
    from diffgui.engine.common.detection import detect_objects

    image = as_image(image, "image")
    template = as_image(template, "template")
    if image.shape != template.shape:
        raise InputError(f"image {image.shape} and template {template.shape} differ in shape")
    mask = as_mask(mask, image.shape, "mask")
    template_mask = as_mask(template_mask, image.shape, "template_mask")
    tobj = (template_catalogue(template, template_mask, thresh=thresh, saturation=saturation)
            if template_objects is None else template_objects)
    if len(tobj) == 0:
        raise InputError("no stars detected in the template: nothing to score the subtraction on")
    iobj = detect_objects(image, mask=mask, thresh=thresh, saturation=saturation) if image_catalogue else []
    if fwhm is None:
        fw = np.asarray(tobj["fwhm"], float)
        fw = fw[np.isfinite(fw) & (fw > 0.5)]
        fwhm = float(np.median(fw)) if fw.size else 3.0
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
    ifw = np.asarray(iobj["fwhm"], float) if len(iobj) else np.zeros(0)
    ifw = ifw[np.isfinite(ifw) & (ifw > 0.5)]
    return StarSets(fit=tobj[~score_half], score=score, source_free=~bad, fwhm=fwhm,
                    n_catalogue=len(tobj), image_fwhm=float(np.median(ifw)) if ifw.size else None)


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
