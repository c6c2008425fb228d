"""Regions that sample the field for :func:`diffgui.app.tuning.tune` (no Qt).

A *sample* is a few square regions far apart (the four corners and the centre,
or a 3 x 3 grid), each ~1/4 of the frame's side (256 px at 1024^2, at most
384). Every trial of the search is scored on the union of the regions only
(the score stars inside them, the source-free pixels inside them), and:

- HOTPANTS and SFFT fit their kernel on the fit-half stars inside the regions
  (their object lists) in the full-frame geometry: one spatial polynomial over
  regions far apart, so a spatial order (``ko``, ``kernel_poly_order``) means
  what it means on the whole frame. Independent crops would each fit their own
  polynomial over ~1/4 of the field, where a constant kernel already looks
  nearly right, and the search would keep an order too low for the frame.
- ZOGY runs only the full-frame tiles (``nx`` x ``ny``, with their overlap)
  that touch a region, each as a crop with the PSFs of the full-frame model at
  that tile's centre (the PSFs of the first full-frame trial with the same PSF
  options): the tile geometry is the full frame's, not a re-tiling of the crop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["RegionSample", "sample_regions", "make_sample", "run_zogy_tiles"]

#: Region side as a fraction of the frame's shorter side, and its limits (pixels).
SIDE_FRACTION, MIN_SIDE, MAX_SIDE = 0.25, 64, 384
#: Fewer than these in the regions: the sample is not used (the whole frame is).
MIN_SCORE_STARS, MIN_FIT_STARS = 12, 20


@dataclass
class RegionSample:
    """Regions ``[(x0, y0, x1, y1), ...]`` (0-based, end exclusive) and the star sets restricted to them."""

    regions: list
    stars: object  # StarSets: fit and score stars inside the regions, source_free only there
    mask: np.ndarray

    def describe(self) -> str:
        side = self.regions[0][2] - self.regions[0][0]
        return (f"{len(self.regions)} regions of {side} px ({100 * self.mask.mean():.0f} % of the "
                f"frame): fit on {len(self.stars.fit)} stars, scored on {len(self.stars.score)}")


def sample_regions(shape, n: int = 5, side: Optional[int] = None) -> list:
    """Square regions that sample a frame of ``shape`` = ``(ny, nx)``.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)``.
    n : {5, 9}
        5: the four corners and the centre; 9: a 3 x 3 grid (corners, edge
        middles, centre).
    side : int, optional
        Region side; default 1/4 of the shorter side within 64-384 px.

    Returns
    -------
    list of tuple
        ``(x0, y0, x1, y1)`` per region.
    """
    from diffgui.engine.errors import InputError

    if n not in (5, 9):
        raise InputError(f"regions must be 5 (corners and centre) or 9 (3 x 3 grid), got {n!r}")
    h, w = (int(s) for s in shape)
    s = int(side or min(max(round(SIDE_FRACTION * min(h, w)), MIN_SIDE), MAX_SIDE))
    if s * 2 > min(h, w):
        raise InputError(f"a {w} x {h} frame is too small for regions of {s} px")
    xs, ys = (0, (w - s) // 2, w - s), (0, (h - s) // 2, h - s)
    if n == 9:
        pos = [(x, y) for y in ys for x in xs]
    else:
        pos = [(xs[0], ys[0]), (xs[2], ys[0]), (xs[1], ys[1]), (xs[0], ys[2]), (xs[2], ys[2])]
    return [(x, y, x + s, y + s) for x, y in pos]


def _inside(x, y, regions) -> np.ndarray:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.zeros(x.shape, bool)
    for x0, y0, x1, y1 in regions:
        keep |= (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    return keep


def make_sample(stars, shape, n: int = 5, side: Optional[int] = None) -> Optional[RegionSample]:
    """The sample of ``n`` regions with ``stars`` (a StarSets of the whole pair) restricted to it,
    or None when the regions would hold too few stars or cover most of the frame anyway."""
    if not n:
        return None
    try:
        regions = sample_regions(shape, n, side)
    except Exception:
        return None
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in regions:
        mask[y0:y1, x0:x1] = True
    fit = stars.fit[_inside(stars.fit["x"], stars.fit["y"], regions)] if len(stars.fit) else stars.fit
    score = stars.score[_inside(stars.score["px"], stars.score["py"], regions)]
    if mask.mean() > 0.6 or len(score) < MIN_SCORE_STARS or len(fit) < MIN_FIT_STARS:
        return None
    sub = dataclasses.replace(stars, fit=fit, score=score, source_free=stars.source_free & mask)
    return RegionSample(regions, sub, mask)


def _touches(inner, regions) -> bool:
    ys, xs = inner
    return any(xs.start < x1 and x0 < xs.stop and ys.start < y1 and y0 < ys.stop
               for x0, y0, x1, y1 in regions)


def _psf_for_tile(psf, crop_shape, tile_centre):
    """The full-frame PSF model ``psf`` re-centred so that ZOGY's one tile of the crop (centred
    on the crop) gets the model at the full-frame tile centre."""
    if not isinstance(psf, dict) or "x0" not in psf:
        return psf
    cx, cy = (crop_shape[1] - 1) / 2.0, (crop_shape[0] - 1) / 2.0
    return {**psf, "x0": psf["x0"] + cx - tile_centre[0], "y0": psf["y0"] + cy - tile_centre[1]}


def _objects_in(obj, origin, crop_shape):
    if obj is None or not len(obj):
        return obj
    x, y = np.asarray(obj["x"], float) - origin[0], np.asarray(obj["y"], float) - origin[1]
    keep = (x >= 0) & (y >= 0) & (x < crop_shape[1]) & (y < crop_shape[0])
    out = obj[keep]
    out["x"], out["y"] = x[keep], y[keep]
    return out


def run_zogy_tiles(pair, params: dict, cached: dict, regions, cancel=None) -> Optional[dict]:
    """ZOGY on the full-frame tiles that touch ``regions`` only; ``{'diff', 'scorr'}`` of the
    full frame's shape (NaN elsewhere), or None when there is one tile (run the frame).

    ``cached``: the full-frame PSF models and object lists (``image_psf``, ``template_psf``,
    ``image_obj``, ``template_obj``) of a run with the same PSF options.
    """
    from diffgui.engine.common.tiling import make_tiles

    from .pair import crop_pair
    from .run import Run

    shape = pair.image.shape
    nx = int(params.get("nx") or 1)
    ny = int(params.get("ny") or nx)
    if nx * ny <= 1:
        return None
    tiles = [t for t in make_tiles(shape, nx, ny, int(params.get("overlap", 50) or 0))
             if _touches(t.inner, regions)]
    out = {k: np.full(shape, np.nan) for k in ("diff", "scorr")}
    for t in tiles:
        crop = crop_pair(pair, *t.outer, f"{pair.name} tile {t.index}")
        cs = crop.image.shape
        p = {**params, "nx": 1, "ny": 1}
        p["image_psf"] = _psf_for_tile(cached["image_psf"], cs, t.center)
        p["template_psf"] = _psf_for_tile(cached["template_psf"], cs, t.center)
        p["image_obj"] = _objects_in(cached.get("image_obj"), t.origin, cs)
        p["template_obj"] = _objects_in(cached.get("template_obj"), t.origin, cs)
        run = Run(method="zogy", params=p)
        run.check_alignment = False  # the pair's alignment was measured by the first trial
        run.execute(crop, cancel=cancel, score=False)
        for k in out:
            out[k][t.inner] = run.results[k][t.inner_local]
    return out
