"""Pixels much sharper than the PSF (cosmic rays, hot pixels) for ZOGY to treat as bad.

ZOGY's score is a matched filter: a cosmic ray in either image is a significant
positive or negative point in ``S_corr`` and, being alone (no counterpart in
the other image, no astrometric variance), it outranks real transients on
stars (on the pyDIA bulge pairs: S_corr 45 and 22 against the microlensing
event's 14 and 13). No point source can be sharper than the PSF, so such
pixels are masked and filled from their neighbours before the subtraction.
"""

from __future__ import annotations

import numpy as np

#: Largest number of passes: each pass finds the brightest pixel of a track,
#: the next one is found once its neighbour has been replaced.
MAX_PASSES = 3


def sharp_pixels(image, err, bad, fwhm, nsigma=6.0, grow=1):
    """Mask of pixels much sharper than a PSF of FWHM ``fwhm``.

    A pixel is flagged when it is a local maximum, exceeds the mean of its
    four neighbours by ``nsigma`` times its noise, and that mean is below
    ``min(0.7 r0, r0 - 0.25)`` times the pixel, with ``r0 = exp(-2.773 / fwhm**2)``
    the neighbour/peak ratio of a Gaussian PSF of FWHM ``fwhm`` (a star cannot
    be sharper than its PSF).
    Flagged pixels are replaced by their neighbours' mean and the search is
    repeated (the rest of a cosmic-ray track), then the mask is grown by
    ``grow`` pixels.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image.
    err : ndarray or float
        Noise (sigma) per pixel.
    bad : ndarray of bool
        Pixels already bad (never flagged, treated as 0).
    fwhm : float
        FWHM of the image's PSF (pixels); nothing is flagged below 1.5 px
        (undersampled images: stars can be single-pixel spikes).
    nsigma : float
        Significance of the excess over the neighbours.
    grow : int
        Dilation (pixels) of the final mask.

    Returns
    -------
    ndarray of bool
    """
    from scipy import ndimage

    found = np.zeros(image.shape, dtype=bool)
    if not np.isfinite(fwhm) or fwhm < 1.5:
        return found
    r0 = np.exp(-2.773 / float(fwhm) ** 2)
    # Compact multi-pixel hits have bright neighbours: the margin below a star's
    # ratio is 30 % (0.25 at most, for undersampled PSFs whose ratio is small).
    limit = min(0.7 * r0, r0 - 0.25)
    work = np.where(bad, 0.0, image)
    err = np.broadcast_to(np.asarray(err, dtype=np.float64), image.shape)
    # First pass on the whole frame without the 3x3 maximum filter: the cheap
    # conditions first, the local-maximum test only at the pixels passing them.
    # Later passes only look around the pixels just replaced (nothing else changed).
    p = np.pad(work, 1, mode="edge")
    nb = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4.0
    del p
    cand = (work - nb > nsigma * err) & (nb < limit * work) & ~bad
    ys, xs = np.nonzero(cand)
    del cand
    h, w = work.shape
    for _ in range(MAX_PASSES):
        if ys.size == 0:
            break
        keep = _is_local_max(work, ys, xs)
        ys, xs = ys[keep], xs[keep]
        if ys.size == 0:
            break
        found[ys, xs] = True
        work[ys, xs] = nb[ys, xs]
        # Pixels whose neighbour mean or 3x3 maximum may have changed.
        yy = (ys[:, None] + _OFF_Y[None, :]).ravel()
        xx = (xs[:, None] + _OFF_X[None, :]).ravel()
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        flat = np.unique(yy[ok] * w + xx[ok])
        ys, xs = np.divmod(flat, w)
        nb_new = _neighbour_mean(work, ys, xs)
        nb[ys, xs] = nb_new
        sel = ((work[ys, xs] - nb_new > nsigma * err[ys, xs]) & (nb_new < limit * work[ys, xs])
               & ~bad[ys, xs] & ~found[ys, xs])
        ys, xs = ys[sel], xs[sel]
    if grow and found.any():
        found = ndimage.binary_dilation(found, np.ones((3, 3), bool), iterations=int(grow)) & ~bad
    return found


_OFF_Y = np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1])
_OFF_X = np.array([-1, 0, 1, -1, 0, 1, -1, 0, 1])


def _clipped(work, ys, xs, dy, dx):
    h, w = work.shape
    return work[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]


def _is_local_max(work, ys, xs):
    v = work[ys, xs]
    ok = np.ones(ys.size, dtype=bool)
    for dy, dx in zip(_OFF_Y, _OFF_X):
        if dy or dx:
            ok &= v >= _clipped(work, ys, xs, dy, dx)
    return ok


def _neighbour_mean(work, ys, xs):
    return (_clipped(work, ys, xs, -1, 0) + _clipped(work, ys, xs, 1, 0)
            + _clipped(work, ys, xs, 0, -1) + _clipped(work, ys, xs, 0, 1)) / 4.0
