"""Pixel sets and weights of the SFFT fit: grown masks, the edge ring, robust scales,
S/N-binned clipping and the template variance through the kernel."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from diffgui.engine.sfft.assembly import poly_conv_sum, poly_map
from diffgui.engine.sfft.basis import kernel_offsets, norm_params

#: Model S/N bin edges for the clipping scale (see _clip_candidates) and the
#: fewest pixels a bin needs for its own scale.
CLIP_SNR_BINS = [3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]
CLIP_MIN_BIN = 50


# ----------------------------------------------------------------------------------------
def _grow(mask, ky, kx):
    if not mask.any():
        return np.zeros_like(mask)
    return ndimage.maximum_filter(mask.view(np.uint8), size=(ky, kx), mode="constant", cval=0) > 0


def _ring(shape, hy, hx):
    """Pixels of the plane grown by (hy, hx) that are not in the fit interior."""
    ny, nx = shape
    ys, xs = [], []
    top = np.arange(-hy, hy)
    bottom = np.arange(ny - hy, ny + hy)
    cols = np.arange(-hx, nx + hx)
    for rows in (top, bottom):
        yy, xx = np.meshgrid(rows, cols, indexing="ij")
        ys.append(yy.ravel())
        xs.append(xx.ravel())
    mid = np.arange(hy, ny - hy)
    side = np.concatenate([np.arange(-hx, hx), np.arange(nx - hx, nx + hx)])
    yy, xx = np.meshgrid(mid, side, indexing="ij")
    ys.append(yy.ravel())
    xs.append(xx.ravel())
    return np.concatenate(ys), np.concatenate(xs)


def _robust_sigma(values, max_n=250_000):
    """1.4826 x median |values| (not centred), from a regular subsample of large arrays."""
    if values.size == 0:
        return float("nan")
    if values.size > max_n:
        values = values[:: values.size // max_n + 1]
    return 1.4826 * float(np.median(np.abs(values)))


def _clip_candidates(rn, snr, good, sigma_clip):
    """Pixels to clip: normalised residual above ``sigma_clip`` times the robust
    scale of pixels of similar model S/N.

    A global scale would flag the cores of bright stars, whose residuals carry
    PSF-model errors on top of the noise, and clipping them runs away (each pass
    fits the cores worse). Outliers (cosmic rays, transients, bad pixels) stand
    out within their S/N bin and are still clipped. The scale never decreases
    with S/N.

    Returns
    -------
    cy, cx : ndarray or None
        Pixels to clip (None: clipping impossible, zero scale).
    sigma : float
        Scale of the faintest bin (the noise-dominated pixels).
    note : str
        Description of the brighter bins' scales for the log.
    """
    sig0 = _robust_sigma(_subsample(rn, good))
    if not sig0 > 0:
        return None, None, sig0, ""
    ra = np.abs(rn)
    cy, cx = np.nonzero(ra > sigma_clip * sig0)
    if cy.size == 0:
        return cy, cx, sig0, ""
    # Bin by S/N in units of the noise scale: ``snr`` is in the units of ``rn``,
    # which are sigma only when the weights are inverse variances (with uniform
    # weights every pixel fell in the faint bin and star cores were clipped).
    edges = np.asarray(CLIP_SNR_BINS) * sig0
    bright = good & (snr >= edges[0])
    rb, sb = ra[bright], snr[bright]
    scales = [sig0]
    frac = 0.0
    for lo, hi in zip(edges, list(edges[1:]) + [np.inf]):
        sel = (sb >= lo) & (sb < hi)
        if np.count_nonzero(sel) >= CLIP_MIN_BIN:
            est = _robust_sigma(rb[sel])
            # Fractional model error implied by this bin's excess scatter.
            frac = max(frac, np.sqrt(max(est * est - sig0 * sig0, 0.0)) / float(np.median(sb[sel])))
        else:
            est = 0.0
        scales.append(max(scales[-1], est))
    scales = np.array(scales)
    sc = snr[cy, cx]
    scale = np.maximum(scales[np.searchsorted(edges, sc, side="right")],
                       np.sqrt(sig0 * sig0 + (frac * sc) ** 2))
    keep = ra[cy, cx] > sigma_clip * scale
    note = ""
    if frac > 0:
        note = f", model error {100 * frac:.2g} % of the source signal"
    return cy[keep], cx[keep], sig0, note


def _unit_offsets(kernel_shape, shape):
    """Kernel offsets in normalised coordinate units (ux, uy)."""
    dy, dx = kernel_offsets(kernel_shape)
    return dx / norm_params(shape[1])[1], dy / norm_params(shape[0])[1]


def _subsample(values, good, max_n=250_000):
    """Values at the good pixels, from a regular subsample of large images."""
    step = max(1, good.size // max_n)
    if step == 1:
        return values[good]
    v, g = values.ravel()[::step], good.ravel()[::step]
    return v[g]


def _sample_median(values, max_n=250_000):
    if values.size > max_n:
        values = values[:: values.size // max_n + 1]
    return float(np.median(values))


def _kernels_by_term(theta_k, kernel_shape):
    """Per polynomial term, the kernel image of its coefficients."""
    return [theta_k[:, b].reshape(kernel_shape) for b in range(theta_k.shape[1])]


def _approx_convolved_variance(theta_k, kernel_shape, kexp, template_var, cancel=None):
    """Cheap version for the weights: the centre kernel, scaled by the local kernel sum."""
    k0 = theta_k[:, 0].reshape(kernel_shape)
    out = poly_conv_sum(template_var, [k0 * k0], [(0, 0)], cancel=cancel, single=True)
    s = theta_k.sum(axis=0)
    if abs(s[0]) > 0 and len(s) > 1:
        out *= np.square(poly_map(s / s[0], kexp, template_var.shape))
    np.maximum(out, 0.0, out=out)
    return out

