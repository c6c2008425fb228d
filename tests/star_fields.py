"""Simulated star fields shared by the scorecard tests."""

import numpy as np


def gauss_stars(shape, x, y, flux, fwhm):
    """Sum of circular Gaussian stars of total ``flux`` at ``(x, y)``, cut at 4 FWHM."""
    s = fwhm / 2.3548
    out = np.zeros(shape)
    r = int(4 * fwhm) + 1
    for xi, yi, fi in zip(x, y, flux):
        cx, cy = int(xi), int(yi)
        yy, xx = np.mgrid[cy - r:cy + r + 1, cx - r:cx + r + 1]
        ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
        g = fi / (2 * np.pi * s * s) * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * s * s))
        out[yy[ok], xx[ok]] += g[ok]
    return out
