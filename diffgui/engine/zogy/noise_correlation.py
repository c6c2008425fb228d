"""Correlated pixel noise (resampled images): measuring it and whitening with it."""

from __future__ import annotations

import numpy as np

from diffgui.engine.common import fft


def estimate_noise_correlation(image, err=None, bad=None, radius=2, max_pixels=2_000_000,
                               min_significance=0.02, highpass=15):
    """Correlation of the pixel noise of ``image`` at lags up to ``radius`` pixels.

    Resampled (drizzled, interpolated) images have correlated noise, which
    ZOGY's white-noise equations underestimate: ``S_corr`` then comes out too
    wide (1.6 instead of 1 on the JWST pair). For each lag ``d`` the
    correlation of ``z = image / err`` is estimated robustly (so sources do
    not dominate) from the MADs of ``z(x) + z(x + d)`` and ``z(x) - z(x + d)``.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image.
    err : ndarray, optional
        Its noise map (default: constant).
    bad : ndarray of bool, optional
        Pixels to ignore.
    radius : int
        Largest lag.
    max_pixels : int
        Larger images are measured on a central crop of this many pixels.
    min_significance : float
        If no lag's correlation exceeds this, None is returned (white noise).
    highpass : int
        Box size (pixels) of the local mean removed first.

    Returns
    -------
    ndarray or None
        ``(2 radius + 1)`` square kernel with 1 at the centre, symmetric, or
        None for white noise.
    """
    from scipy import ndimage

    z = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(z)
    if bad is not None:
        ok &= ~np.asarray(bad, dtype=bool)
    h, w = z.shape
    r = int(radius)
    if h * w > max_pixels:
        # A central crop is enough for a handful of correlation coefficients.
        side = int(np.sqrt(max_pixels))
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        sl = (slice(y0, y0 + side), slice(x0, x0 + side))
        z, ok = z[sl], ok[sl]
        err = None if err is None else np.asarray(err)[sl]
        h, w = z.shape
    if err is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = z / np.asarray(err, dtype=np.float64)
        ok &= np.isfinite(z)
    z = np.where(ok, z, 0.0)
    # High-pass: structure larger than a few pixels (galaxies, background
    # residuals) is not pixel noise and would read as a long-range correlation.
    cnt = ndimage.uniform_filter(ok.astype(float), highpass)
    z = z - np.where(cnt > 0, ndimage.uniform_filter(z, highpass) / np.maximum(cnt, 1e-12), 0.0)
    # Sources: wherever a smoothed (matched-filter-like) image stands out of
    # its own noise, both signs so that the noise itself is cut symmetrically.
    zs = ndimage.gaussian_filter(z, 1.5)
    v = zs[ok]
    s_s = 1.4826 * float(np.median(np.abs(v - np.median(v)))) if v.size else 0.0
    if s_s > 0:
        src = ndimage.binary_dilation(np.abs(zs) > 2.5 * s_s, iterations=3)
        ok &= ~src
    c = np.zeros((2 * r + 1, 2 * r + 1))
    c[r, r] = 1.0
    for dy in range(0, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx <= 0:
                continue
            ys = slice(0, h - dy)
            xa = slice(max(0, -dx), w - max(0, dx))
            xb = slice(max(0, dx), w - max(0, -dx))
            a_, b_ = z[ys, xa], z[dy:, xb]
            m = ok[ys, xa] & ok[dy:, xb]
            if m.sum() < 1000:
                continue
            av, bv = a_[m], b_[m]
            if av.size > 250_000:
                k = av.size // 250_000 + 1
                av, bv = av[::k], bv[::k]
            # z is zero-mean after the high-pass: uncentred MADs suffice.
            vp = np.median(np.abs(av + bv)) ** 2
            vm = np.median(np.abs(av - bv)) ** 2
            rho = (vp - vm) / (vp + vm) if vp + vm > 0 else 0.0
            c[r + dy, r + dx] = c[r - dy, r - dx] = rho
    off = c.copy()
    off[r, r] = 0.0
    if np.abs(off).max() < min_significance:
        return None
    return c


def prepare_corr(c):
    """Validate a noise-correlation kernel: odd square, finite, centre 1."""
    c = np.array(c, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] % 2 == 0 or c.shape[1] % 2 == 0 or not np.isfinite(c).all():
        raise ValueError("a noise-correlation kernel must be a finite 2-D array with odd sizes")
    ctr = c[c.shape[0] // 2, c.shape[1] // 2]
    if ctr <= 0:
        raise ValueError("the centre of a noise-correlation kernel must be positive")
    return c / ctr


def _whitening(corr, pshape):
    """1 / sqrt(noise power spectrum) on the rfft grid of ``pshape``, mean power 1."""
    psd = fft.rfft2(fft.kernel_to_origin(corr, pshape)).real
    psd = np.maximum(psd, 0.05 * psd.max())
    return 1.0 / np.sqrt(psd)
