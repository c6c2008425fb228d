"""Isolated hot pixels: single pixels (or pairs) far above their neighbours.

A hot pixel (or a one- or two-pixel cosmic ray) is sharper than any sampled
PSF: its second-brightest neighbour holds a small share of its excess over
the sky, where a star's peak has at least four neighbours holding
``1 / MAX_PEAK_RATIO`` of it (a Gaussian of FWHM 1.2 px sampled at its
centre: 15 %). The second-brightest neighbour, not the brightest, so that two
adjacent hot pixels are found too. Left unmasked, such
pixels become stamps and PSF stars, drag kernel fits, and show up as
candidates. Every ``run_*`` adds them to the masks (:func:`find_hot_pixels`).
The sky of each pixel is the median of the ring two pixels away, so that
hot pixels on a galaxy or in a sky gradient are judged against their own
surroundings.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_PEAK_RATIO", "MIN_SIGMA", "find_hot_pixels"]

#: Excess over the sky that a pixel needs over MAX_PEAK_RATIO times that of its
#: brightest neighbour to count as hot (star cores down to FWHM ~1.1 px stay).
MAX_PEAK_RATIO = 8.0
#: ... by at least this many background sigmas.
MIN_SIGMA = 10.0
#: Skip the search for images whose stated FWHM is below this (undersampled data).
MIN_FWHM = 1.2


def find_hot_pixels(image, mask=None, fwhm=None, *, ratio: float = MAX_PEAK_RATIO,
                    nsigma: float = MIN_SIGMA) -> np.ndarray:
    """Boolean map of isolated hot pixels of ``image`` (True = hot).

    A pixel is hot when ``e - ratio * max(e2, 0) > nsigma * rms``, with ``e``
    its excess over the local sky (median of the 16 pixels two steps away),
    ``e2`` that of its second-brightest of 8 neighbours and ``rms`` the
    image's robust pixel noise; masked, non-finite and outside pixels count
    as sky. Only pixels above ``median + 5 rms`` are examined, so the cost is
    a few passes over the image.

    Parameters
    ----------
    image : ndarray
        2-D float image (non-finite pixels allowed).
    mask : ndarray of bool, optional
        Known bad pixels (never reported again).
    fwhm : float, optional
        The image's FWHM; below :data:`MIN_FWHM` nothing is flagged.
    ratio, nsigma : float
        Thresholds (see above).

    Returns
    -------
    ndarray of bool
    """
    img = np.asarray(image, dtype=np.float64)
    bad = ~np.isfinite(img)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    hot = np.zeros(img.shape, dtype=bool)
    if (fwhm is not None and fwhm < MIN_FWHM) or min(img.shape) < 5 or bad.all():
        return hot
    step = max(1, int(np.sqrt(img.size / 250_000)))
    sample = img[::step, ::step][~bad[::step, ::step]]
    if sample.size < 25:
        return hot
    med = float(np.median(sample))
    rms = 1.4826 * float(np.median(np.abs(sample - med)))
    if not rms > 0:
        return hot
    with np.errstate(invalid="ignore"):
        ys, xs = np.nonzero((img > med + 5.0 * rms) & ~bad)
    if ys.size == 0:
        return hot
    k = nsigma * rms
    if ratio >= 1.0:
        # Cheap necessary condition first (star pixels are most candidates): with
        # n2 the second-brightest valid neighbour, e - ratio * max(n2 - sky, 0) > k
        # implies v - n2 > k for ratio >= 1 whatever the sky, so only pixels that
        # pass it need the 16-pixel ring median. 0.999: margin for rounding.
        neigh = _gather(img, bad, ys, xs, _NEIGHBOURS)
        neigh[np.isnan(neigh)] = -np.inf
        n2 = np.partition(neigh, -2, axis=1)[:, -2]
        del neigh
        with np.errstate(invalid="ignore"):
            sel = img[ys, xs] - n2 > 0.999 * k
        ys, xs = ys[sel], xs[sel]
        if ys.size == 0:
            return hot
    ring = _gather(img, bad, ys, xs, _RING)
    sky = np.median(np.where(np.isnan(ring), med, ring), axis=1)
    del ring
    neigh = _gather(img, bad, ys, xs, _NEIGHBOURS) - sky[:, None]
    neigh[np.isnan(neigh)] = 0.0
    second = np.maximum(np.partition(neigh, -2, axis=1)[:, -2], 0.0)
    keep = (img[ys, xs] - sky) - ratio * second > k
    hot[ys[keep], xs[keep]] = True
    return hot


#: Offsets of the 8 neighbours and of the ring two pixels away (16), row-major.
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
_RING = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if max(abs(dy), abs(dx)) == 2]


def _gather(img, bad, ys, xs, offsets):
    """Values at ``(ys + dy, xs + dx)`` for each offset (one column each); NaN
    for bad and outside pixels. Only the candidates are touched (flat indices),
    never a padded copy of the frame."""
    h, w = img.shape
    flat_img, flat_bad = img.ravel(), bad.ravel()
    base = ys * w + xs
    edge = np.flatnonzero((ys < 2) | (ys >= h - 2) | (xs < 2) | (xs >= w - 2))
    out = np.empty((ys.size, len(offsets)), dtype=img.dtype)
    for j, (dy, dx) in enumerate(offsets):
        idx = base + (dy * w + dx)
        outside = None
        if edge.size:
            y, x = ys[edge] + dy, xs[edge] + dx
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            idx[edge] = np.where(inside, np.clip(y, 0, h - 1) * w + np.clip(x, 0, w - 1), 0)
            outside = edge[~inside]
        col = flat_img.take(idx)
        col[flat_bad.take(idx)] = np.nan
        if outside is not None:
            col[outside] = np.nan
        out[:, j] = col
    return out
