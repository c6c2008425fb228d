"""Outputs of ``run_sfft`` around the solver: object boxes for the fit, the
template noise propagated through the fitted kernel, and the decorrelation of
the difference. The solver itself is :mod:`diffgui.engine.sfft`.
"""

from __future__ import annotations

import numpy as np

from diffgui.engine.errors import InputError
from diffgui.engine.sfft.assembly import poly_conv_sum, poly_map
from diffgui.engine.sfft.basis import poly_exponents, product_table

__all__ = ["convolved_variance", "object_regions", "decorrelation_kernel",
           "decorrelate_difference"]

#: Object-region selection (stdpipe 0.4.1 defaults).
OBJ_GRID = 4
OBJ_PER_CELL = 10
OBJ_MAX_MASKED = 0.5
OBJ_MIN_PIXELS_PER_PARAM = 10


def convolved_variance(result, template_var, cancel=None) -> np.ndarray:
    """Template variance propagated through the fitted kernel.

    ``V(p) = sum_a a_a(p)^2 var_R(p - d_a)`` with zero fill; exact for the
    spatially varying kernel (one FFT convolution per monomial of the
    squared kernel polynomial).

    Parameters
    ----------
    result : SFFTResult
    template_var : ndarray
        Template variance map (sigma^2); non-finite values count as 0.
    """
    tv = np.asarray(template_var, dtype=np.float64)
    if not np.all(np.isfinite(tv)):
        tv = np.where(np.isfinite(tv), tv, 0.0)
    kexp = result.kernel_exponents
    mexp = poly_exponents(2 * result.kernel_poly_order)
    pt = product_table(kexp, kexp, mexp)
    th = result.kernel_coeffs
    L = np.zeros((len(mexp), th.shape[0]))
    for b1 in range(len(kexp)):
        for b2 in range(len(kexp)):
            L[pt[b1, b2]] += th[:, b1] * th[:, b2]
    used = [m for m in range(len(mexp)) if np.any(L[m] != 0)]
    if not used:
        return np.zeros(result.image_shape)
    kernels = [L[m].reshape(result.kernel_shape) for m in used]
    out = poly_conv_sum(tv, kernels, [mexp[m] for m in used], cancel=cancel, single=True)
    np.maximum(out, 0.0, out=out)
    return out


def _column(obj, name):
    try:
        return np.asarray(obj[name], dtype=np.float64)
    except (KeyError, ValueError, IndexError, TypeError):
        return None


def object_regions(obj, shape, obj_size=None, mask=None, n_params=0, grid=OBJ_GRID,
                   per_cell=OBJ_PER_CELL, max_masked=OBJ_MAX_MASKED, log=None):
    """Boxes around objects where the kernel is fitted (like HOTPANTS stamps).

    Parameters
    ----------
    obj : table-like
        Objects with ``x``, ``y`` (0-based) and optionally ``flags``,
        ``flux``, ``fluxerr``, ``fwhm``. Flagged objects are dropped; the rest
        are ranked by flux/fluxerr (or flux).
    shape : tuple
        Image shape.
    obj_size : int, optional
        Half-size of the boxes; default ceil(3 x median fwhm), or 15.
    mask : ndarray of bool, optional
        Bad pixels: boxes more than ``max_masked`` masked are skipped.
    n_params : int
        Number of fitted parameters: with fewer than 10 pixels per parameter
        in the boxes, None is returned (fit the whole image).
    grid, per_cell : int
        At most ``per_cell`` objects in each cell of a ``grid x grid`` partition.

    Returns
    -------
    ndarray of bool or None
        True inside the boxes; None when the boxes hold too few pixels.
    """
    log = log or (lambda *a: None)
    ny, nx = shape
    x, y = _column(obj, "x"), _column(obj, "y")
    if x is None or y is None:
        raise InputError("obj must have 'x' and 'y' columns (0-based pixel coordinates).")
    keep = np.isfinite(x) & np.isfinite(y)
    flags = _column(obj, "flags")
    if flags is not None:
        keep &= flags == 0
    flux, fluxerr = _column(obj, "flux"), _column(obj, "fluxerr")
    if flux is not None and fluxerr is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            rank = flux / fluxerr
    else:
        rank = flux if flux is not None else -np.arange(x.size, dtype=float)
    rank = np.where(np.isfinite(rank), rank, -np.inf)
    if obj_size is None:
        fwhm = _column(obj, "fwhm")
        fw = fwhm[keep & np.isfinite(fwhm) & (fwhm > 0)] if fwhm is not None else np.array([])
        half = int(np.ceil(3 * np.median(fw))) if fw.size else 15
    else:
        half = int(np.ceil(float(obj_size)))
        if half < 1:
            raise InputError(f"obj_size must be >= 1 pixel, got {obj_size!r}")
    order = np.argsort(-rank[keep], kind="stable")
    xs, ys = x[keep][order], y[keep][order]
    regions = np.zeros(shape, dtype=bool)
    counts = np.zeros((grid, grid), dtype=int)
    used = 0
    for xi, yi in zip(xs, ys):
        cx, cy = int(round(xi)), int(round(yi))
        if cx - half < 0 or cy - half < 0 or cx + half >= nx or cy + half >= ny:
            continue
        gx, gy = min(grid - 1, cx * grid // nx), min(grid - 1, cy * grid // ny)
        if counts[gy, gx] >= per_cell:
            continue
        box = (slice(cy - half, cy + half + 1), slice(cx - half, cx + half + 1))
        if mask is not None and mask[box].mean() > max_masked:
            continue
        regions[box] = True
        counts[gy, gx] += 1
        used += 1
    n_pix = int(regions.sum())
    if n_pix < OBJ_MIN_PIXELS_PER_PARAM * n_params or used == 0:
        log(f"SFFT: object boxes hold {n_pix} px ({used} objects), fewer than "
            f"{OBJ_MIN_PIXELS_PER_PARAM} per parameter: fitting the whole image")
        return None
    log(f"SFFT: fitting in {used} boxes of {2 * half + 1}x{2 * half + 1} px ({n_pix} px)")
    return regions


def decorrelation_kernel(result, sigma_image, sigma_template, size=None, x=None, y=None):
    """Kernel that whitens the noise of the difference (Reiss & Lupton 2016; SFFT).

    ``psi^(k) = sqrt((s_I^2 + kappa^2 s_T^2) / (s_I^2 + |K^(k)|^2 s_T^2))`` for the
    fitted kernel K at (x, y) (the image centre by default), with kernel sum
    kappa. Convolving the difference with psi leaves its flux scale unchanged
    (sum psi = 1) and makes background-dominated noise white.

    Returns
    -------
    ndarray
        Odd-sized real kernel, unit sum.
    """
    ny, nx = result.image_shape
    x = (nx - 1) / 2 if x is None else x
    y = (ny - 1) / 2 if y is None else y
    K = result.evaluate_kernel_at(x, y)
    ky, kx = K.shape
    size = size or (2 * max(ky, kx) + 1)
    size += 1 - size % 2
    L = max(64, 4 * size)
    from diffgui.engine.common.fft import kernel_to_origin
    Kh = np.fft.rfft2(kernel_to_origin(K, (L, L)))
    kappa = K.sum()
    si2, st2 = float(sigma_image) ** 2, float(sigma_template) ** 2
    psi_h = np.sqrt((si2 + kappa ** 2 * st2) / (si2 + np.abs(Kh) ** 2 * st2))
    psi = np.fft.irfft2(psi_h, (L, L))
    h = size // 2
    idx = np.arange(-h, h + 1) % L
    psi = psi[np.ix_(idx, idx)]
    return psi / psi.sum()


def decorrelate_difference(result, diff, err_var, template_var, bad,
                           sigma_image, sigma_template, cancel=None):
    """Decorrelated difference and its noise map.

    Parameters
    ----------
    diff : ndarray
        Difference image.
    err_var, template_var : ndarray or float
        Science and template variance (maps or constants).
    bad : ndarray of bool
        Pixels set to 0 before filtering (masked, dmask).
    sigma_image, sigma_template : float
        Background noise levels defining the decorrelation kernel.

    Returns
    -------
    diff_dec, noise_dec : ndarray
    """
    shape = diff.shape
    psi = decorrelation_kernel(result, sigma_image, sigma_template)
    d = np.where(bad, 0.0, diff)
    out = poly_conv_sum(d, [psi], [(0, 0)], cancel=cancel)
    ev = np.broadcast_to(np.asarray(err_var, dtype=np.float64), shape)
    var = poly_conv_sum(np.ascontiguousarray(ev), [psi * psi], [(0, 0)], cancel=cancel,
                        single=True)
    K0 = result.evaluate_kernel_at((shape[1] - 1) / 2, (shape[0] - 1) / 2)
    from scipy.signal import fftconvolve
    pk = fftconvolve(psi, K0)
    tv = np.broadcast_to(np.asarray(template_var, dtype=np.float64), shape)
    if np.any(tv):
        vt = poly_conv_sum(np.ascontiguousarray(tv), [pk * pk], [(0, 0)], cancel=cancel,
                           single=True)
        s = result.kernel_sum_coeffs
        if abs(s[0]) > 0:
            vt *= np.square(poly_map(s / s[0], result.kernel_exponents, shape))
        var += vt
    np.maximum(var, 0.0, out=var)
    return out, np.sqrt(var)
