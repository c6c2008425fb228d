"""ZOGY's bad pixels: filling sparse ones from their neighbours, the noise of the
filled values, and the pixels kept out of the scale/shift fit."""

from __future__ import annotations

import numpy as np

from diffgui.engine.zogy.fourier import _pad


def _filled(img, b, err, sig):
    """``img`` with bad pixels filled, the noise (sigma) of the filled values, and
    the bad pixels that could not be filled.

    A bad pixel with at least 8 good pixels in its 5 x 5 neighbourhood (hot
    pixels, cosmic rays, sparse random masks) gets their mean; its noise is
    their scatter (large on a star's slope) plus the noise of the mean. Larger
    bad regions get 0 (the background) and an inflated noise, as before.
    Returns ``(filled, fill_sigma or None, hard)``.
    """
    if not b.any():
        return img, None, b
    from scipy import ndimage

    good = (~b).astype(np.float64)
    z = np.where(b, 0.0, img)
    cnt = ndimage.uniform_filter(good, 5, mode="mirror") * 25.0
    s1 = ndimage.uniform_filter(z, 5, mode="mirror") * 25.0
    s2 = ndimage.uniform_filter(z * z, 5, mode="mirror") * 25.0
    soft = b & (cnt >= 7.5)
    hard = b & ~soft
    n = np.maximum(cnt[soft], 1.0)
    mean = s1[soft] / n
    scatter = np.maximum(s2[soft] / n - mean * mean, 0.0)
    e = np.full(int(soft.sum()), sig) if err is None else np.asarray(err, dtype=np.float64)[soft]
    e = np.where(np.isfinite(e) & (e > 0), e, sig)
    out = z
    out[soft] = mean
    fill = np.full(img.shape, np.nan)
    fill[soft] = np.sqrt(scatter + e * e * (1.0 + 1.0 / n))
    return out, fill, hard


def _var_map(err, b, s, vbad, m, pshape, fill=None):
    """A callable giving the padded variance map on demand (None: constant s**2).

    Bad pixels get ``fill`` (the noise of their filled value) where it is
    finite, else ``sqrt(vbad)``.
    """
    if err is None and not b.any():
        return None

    def padded():
        e = np.full(b.shape, s) if err is None else np.asarray(err, dtype=np.float64)
        if b.any():
            e = np.where(b, np.sqrt(vbad), e)
            if fill is not None:
                e = np.where(np.isfinite(fill), fill, e)
        # The margin holds mirrored noise, like the image there.
        v = _pad(e, m, pshape)
        return np.square(v, out=v)

    return padded


def _fit_pixels(bad, hard, Pn, Pr, fit_mask):
    """Pixels of the scale/shift fit: ``fit_mask`` without the bad pixels and their
    neighbours, and without pixels a PSF radius from unfilled (``hard``) ones."""
    near_bad = bad
    if bad.any():
        # D near an unfilled bad pixel sees its zero fill: keep those pixels out
        # of the fit; filled ones only disturb their immediate neighbours.
        from scipy import ndimage

        near_bad = ndimage.maximum_filter(bad.view(np.uint8), size=3).astype(bool)
        if hard.any():
            r = max(Pn.shape + Pr.shape) // 2
            near_bad |= ndimage.maximum_filter(hard.view(np.uint8), size=2 * r + 1).astype(bool)
    return ~near_bad if fit_mask is None else (np.asarray(fit_mask, dtype=bool) & ~near_bad)
