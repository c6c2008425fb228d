"""Windowed centroids of the same stars in two images (used by the alignment check).

Cross-correlating two images whose PSFs differ (seeing, an asymmetric PSF, extended
galaxies) moves the correlation peak by a fraction of a pixel even when the images lie on
one grid. Star positions do not have that bias when they are measured the same way in
both images: :func:`star_pairs` takes bright, unsaturated, isolated stars of the template
(local maxima of its high-passed image), finds each one in the science image from a
coarse offset, and measures both positions with the same Gaussian window
(:func:`windowed_centroid`, the fixed point of sep's ``winpos`` iteration), on stamps
whose local background (median of the stamp border) is removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StarPairs", "local_peaks", "windowed_centroid", "star_pairs"]

#: Peaks below this many sky sigmas (of the high-passed image) are not used as stars.
MIN_SIGNIFICANCE = 10.0
#: A neighbour brighter than this fraction of a star, closer than 2 FWHM, makes it not isolated.
NEIGHBOUR_FRACTION = 0.1


@dataclass
class StarPairs:
    """Positions (0-based pixels) of stars measured in both images.

    Attributes
    ----------
    template_xy, science_xy : ndarray, shape (N, 2)
        Windowed centroids in the template and in the science image.
    fwhm : tuple of float
        Median half-maximum FWHM (px) of the bright stars in (science, template).
    sigma : float
        Gaussian window (px) used in both images.
    """

    template_xy: np.ndarray
    science_xy: np.ndarray
    fwhm: tuple
    sigma: float


def local_peaks(a, threshold):
    """Pixels above ``threshold`` not below any of their 8 neighbours: ``(y, x, value)``, brightest first."""
    ny, nx = a.shape
    pad = np.full((ny + 2, nx + 2), -np.inf, dtype=a.dtype)
    pad[1:-1, 1:-1] = a
    flat = pad.ravel()
    idx = np.flatnonzero(pad > threshold)
    w = nx + 2
    for off in (-w - 1, -w, -w + 1, -1, 1, w - 1, w, w + 1):
        idx = idx[flat[idx] >= flat[idx + off]]
    y, x = np.divmod(idx, w)
    v = flat[idx]
    order = np.argsort(-v, kind="stable")
    return y[order] - 1, x[order] - 1, v[order]


def _stamps(image, xc, yc, h):
    """(N, 2h+1, 2h+1) stamps centred on integer pixels, background (border median) removed."""
    off = np.arange(-h, h + 1)
    st = image[(yc[:, None] + off)[:, :, None], (xc[:, None] + off)[:, None, :]].astype(np.float64)
    border = np.concatenate([st[:, 0, :], st[:, -1, :], st[:, 1:-1, 0], st[:, 1:-1, -1]], axis=1)
    return st - np.median(border, axis=1)[:, None, None]


def _half_max_fwhm(st):
    """FWHM (px) of each stamp from the number of pixels above half its maximum."""
    peak = st.max(axis=(1, 2))
    n = np.count_nonzero(st >= 0.5 * peak[:, None, None], axis=(1, 2))
    return 2.0 * np.sqrt(n / np.pi)


def windowed_centroid(stamps, sigma, start=None, iterations=30, tol=1e-4):
    """Gaussian-windowed centroids of background-subtracted stamps.

    Iterates ``p <- p + 2 sum(w I (u - p)) / sum(w I)`` with ``w`` a Gaussian of
    ``sigma`` centred on ``p`` (truncated at 3 sigma), as sep's ``winpos`` does; for a
    symmetric star the fixed point is its centre, whatever its width.

    Parameters
    ----------
    stamps : ndarray, shape (N, S, S)
        Odd-sized, background-subtracted stamps.
    sigma : float
        Window sigma (px); use the same in both images.
    start : ndarray, shape (N, 2), optional
        Initial ``(x, y)`` relative to the stamp centre (default 0).

    Returns
    -------
    xy : ndarray, shape (N, 2)
        Centroids relative to the stamp centre.
    ok : ndarray of bool
        Converged with a positive windowed flux inside the stamp.
    """
    n, s, _ = stamps.shape
    h = s // 2
    u = np.arange(s, dtype=np.float64) - h
    p = np.zeros((n, 2)) if start is None else np.array(start, dtype=np.float64)
    ok = np.ones(n, bool)
    inv = 0.5 / sigma ** 2
    for _ in range(iterations):
        du = u[None, :] - p[:, :1]                       # (N, S) along x
        dv = u[None, :] - p[:, 1:]                       # (N, S) along y
        wx, wy = np.exp(-inv * du ** 2), np.exp(-inv * dv ** 2)
        wi = stamps * wy[:, :, None] * wx[:, None, :]
        r2 = dv[:, :, None] ** 2 + du[:, None, :] ** 2
        wi[r2 > 9.0 * sigma ** 2] = 0.0
        sw = wi.sum(axis=(1, 2))
        good = sw > 0
        sw = np.where(good, sw, 1.0)
        step = np.column_stack([2.0 * (wi.sum(axis=1) * du).sum(1) / sw,
                                2.0 * (wi.sum(axis=2) * dv).sum(1) / sw])
        step = np.clip(np.where(good[:, None], step, 0.0), -1.0, 1.0)
        ok &= good
        p += step
        if np.all(np.abs(step) < tol):
            break
    ok &= np.all(np.isfinite(p), axis=1) & np.all(np.abs(p) < h - 3.0 * sigma + 1.0, axis=1)
    return p, ok


def _clean(image, bad, xc, yc, h):
    """Stamps without bad pixels and without a saturated-looking flat top."""
    keep = ~bad[(yc[:, None] + np.arange(-h, h + 1))[:, :, None],
                (xc[:, None] + np.arange(-h, h + 1))[:, None, :]].any(axis=(1, 2))
    raw = image[yc, xc]
    top = image[(yc[:, None] + np.arange(-2, 3))[:, :, None], (xc[:, None] + np.arange(-2, 3))[:, None, :]]
    # a star centred on a pixel corner has 4 equal top pixels; a saturated one has more
    flat = np.count_nonzero(top >= raw[:, None, None] - 0.005 * np.abs(raw[:, None, None]), axis=(1, 2)) >= 5
    return keep & ~flat


def _isolated(x, y, v, radius):
    """True for peaks without another peak brighter than NEIGHBOUR_FRACTION of theirs within radius."""
    from scipy.spatial import cKDTree

    out = np.ones(len(x), bool)
    if len(x) < 2:
        return out
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius, output_type="ndarray")
    i, j = pairs[:, 0], pairs[:, 1]
    out[i[v[j] > NEIGHBOUR_FRACTION * v[i]]] = False
    out[j[v[i] > NEIGHBOUR_FRACTION * v[j]]] = False
    return out


def star_pairs(image, template, bad, template_bad, peaks, shift, max_stars=300):
    """Measure the same stars in both images with one Gaussian window.

    Parameters
    ----------
    image, template : ndarray
        Science image and template (same shape, float; bad pixels may hold anything).
    bad, template_bad : ndarray of bool
        Pixels to avoid (masked, not finite).
    peaks : tuple of ndarray
        ``(x, y, value)`` of the template's local maxima (integer pixels; value in sky
        sigmas of a high-passed image), any order.
    shift : callable
        ``shift(x, y) -> (dx, dy)``: coarse science-minus-template offset at template pixels.
    max_stars : int
        Brightest isolated stars kept.

    Returns
    -------
    StarPairs or None
        None when no star can be measured.
    """
    px, py, pv = (np.asarray(a) for a in peaks)
    ny, nx = template.shape
    order = np.argsort(-pv, kind="stable")
    px, py, pv = px[order], py[order], pv[order]
    strong = pv >= MIN_SIGNIFICANCE
    if strong.sum() < 1:
        return None
    sx, sy = (np.asarray(v, float) for v in shift(px[strong].astype(float), py[strong].astype(float)))
    cx, cy = px[strong], py[strong]
    ix, iy = np.rint(cx + sx).astype(np.int64), np.rint(cy + sy).astype(np.int64)
    h0 = 7
    inside = (np.minimum(cx, ix) >= h0) & (np.maximum(cx, ix) < nx - h0) & \
        (np.minimum(cy, iy) >= h0) & (np.maximum(cy, iy) < ny - h0)
    if inside.sum() < 1:
        return None
    bright = np.nonzero(inside)[0][:40]
    fwhm_t = float(np.median(_half_max_fwhm(_stamps(template, cx[bright], cy[bright], h0))))
    fwhm_s = float(np.median(_half_max_fwhm(_stamps(image, ix[bright], iy[bright], h0))))
    sigma = float(np.clip(max(fwhm_t, fwhm_s) / 2.3548, 0.7, 8.0))
    h = int(np.ceil(3.0 * sigma)) + 2
    inside = (np.minimum(cx, ix) >= h) & (np.maximum(cx, ix) < nx - h) & \
        (np.minimum(cy, iy) >= h) & (np.maximum(cy, iy) < ny - h)
    sel = np.nonzero(inside)[0]
    # the strong peaks are the first ones of the sorted list: the isolation flags line up
    sel = sel[_isolated(px, py, pv, 2.0 * max(fwhm_t, fwhm_s))[:len(cx)][sel]]
    sel = sel[_clean(template, template_bad, cx[sel], cy[sel], h) & _clean(image, bad, ix[sel], iy[sel], h)]
    sel = sel[:max_stars]
    if len(sel) == 0:
        return None
    pt, ok_t = windowed_centroid(_stamps(template, cx[sel], cy[sel], h), sigma)
    start = np.column_stack([cx[sel] + sx[sel] - ix[sel], cy[sel] + sy[sel] - iy[sel]])
    ps, ok_s = windowed_centroid(_stamps(image, ix[sel], iy[sel], h), sigma, start=start)
    ok = ok_t & ok_s
    sel = sel[ok]
    txy = np.column_stack([cx[sel], cy[sel]]) + pt[ok]
    sxy = np.column_stack([ix[sel], iy[sel]]) + ps[ok]
    return StarPairs(txy, sxy, (fwhm_s, fwhm_t), sigma)
