"""Operations on the model grid: interpolated values and gradients at star offsets,
sub-pixel shifts of stamp stacks, normalisation and centring."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from diffgui.engine.errors import FitError


def _model_values(coef, terms, fx, fy, need_grad):
    """Model (and its fine-grid gradients) at fine coordinates (fx, fy) of every star."""
    axes = _tensor_axes(fx, fy)
    if axes is not None:
        return _model_values_separable(coef, terms, axes[0], axes[1], need_grad)
    nc = coef.shape[0]
    coords = np.array([fy.ravel(), fx.ravel()])
    val = np.zeros(fx.size)
    gxv = np.zeros(fx.size) if need_grad else None
    gyv = np.zeros(fx.size) if need_grad else None
    tt = np.broadcast_to(terms[:, None, None, :], fx.shape + (nc,)).reshape(-1, nc)
    for c in range(nc):
        v = ndimage.map_coordinates(coef[c], coords, order=3, mode="constant", cval=0.0)
        val += tt[:, c] * v
        if need_grad:
            gy_img, gx_img = _fourier_gradient(coef[c])
            gxv += tt[:, c] * ndimage.map_coordinates(gx_img, coords, order=3, mode="constant")
            gyv += tt[:, c] * ndimage.map_coordinates(gy_img, coords, order=3, mode="constant")
    shape = fx.shape
    if need_grad:
        return val.reshape(shape), gxv.reshape(shape), gyv.reshape(shape)
    return val.reshape(shape), None, None


def _tensor_axes(fx, fy):
    """``(ux, uy)`` when every star's coordinates are a tensor grid (``fx[s, i, j]``
    independent of ``i``, ``fy[s, i, j]`` of ``j``: stamps of whole pixels), else None."""
    if fx.ndim != 3 or fy.shape != fx.shape:
        return None
    ux, uy = fx[:, 0, :], fy[:, :, 0]
    if np.array_equal(fx, np.broadcast_to(ux[:, None, :], fx.shape)) and \
            np.array_equal(fy, np.broadcast_to(uy[:, :, None], fy.shape)):
        return ux, uy
    return None


def _bspline_matrix(u, n):
    """Matrices ``M`` (``u.shape + (n,)``) such that ``M @ c`` interpolates cubic
    B-spline coefficients ``c`` (mirror-extended) at coordinates ``u``; rows of
    coordinates outside ``[0, n - 1]`` are 0, as ``map_coordinates(mode='constant')``."""
    M = np.zeros(u.shape + (n,))
    inside = (u >= 0) & (u <= n - 1)
    i0 = np.floor(u).astype(int)
    t = u - i0
    t2, t3 = t * t, t * t * t
    weights = ((1 - t) ** 3 / 6, (4 - 6 * t2 + 3 * t3) / 6, (1 + 3 * t + 3 * t2 - 3 * t3) / 6, t3 / 6)
    period = max(2 * n - 2, 1)
    lead = tuple(np.indices(u.shape))
    for a, wa in zip((-1, 0, 1, 2), weights):
        idx = np.abs(i0 + a) % period
        idx = np.where(idx > n - 1, period - idx, idx)
        np.add.at(M, lead + (idx,), np.where(inside, wa, 0.0))
    return M


def _model_values_separable(coef, terms, ux, uy, need_grad):
    """:func:`_model_values` for tensor-grid coordinates: per star, the cubic
    spline is two small matrix products (``My @ C @ Mx.T``) instead of a
    16-tap interpolation at every pixel; equal to ``map_coordinates(order=3,
    mode='constant')`` to ~1e-15."""
    nc = coef.shape[0]
    my = _bspline_matrix(uy, coef.shape[1])                 # (nst, rows, wf)
    mxt = _bspline_matrix(ux, coef.shape[2]).transpose(0, 2, 1)
    shape = (ux.shape[0], uy.shape[1], ux.shape[1])
    val = np.zeros(shape)
    gxv = np.zeros(shape) if need_grad else None
    gyv = np.zeros(shape) if need_grad else None
    for c in range(nc):
        tc = terms[:, c][:, None, None]
        val += tc * (my @ ndimage.spline_filter(coef[c], 3, mode="mirror") @ mxt)
        if need_grad:
            gy_img, gx_img = _fourier_gradient(coef[c])
            gxv += tc * (my @ ndimage.spline_filter(gx_img, 3, mode="mirror") @ mxt)
            gyv += tc * (my @ ndimage.spline_filter(gy_img, 3, mode="mirror") @ mxt)
    return val, gxv, gyv


def _fourier_gradient(img):
    """(d/dy, d/dx) of a small, well-sampled image by spectral differentiation."""
    h, w = img.shape
    F = np.fft.fft2(img)
    ky = 2j * np.pi * np.fft.fftfreq(h)[:, None]
    kx = 2j * np.pi * np.fft.fftfreq(w)[None, :]
    if h % 2 == 0:
        ky[h // 2] = 0
    if w % 2 == 0:
        kx[:, w // 2] = 0
    return np.fft.ifft2(F * ky).real, np.fft.ifft2(F * kx).real


def _shift_weights(t, kind):
    """Interpolation taps (offsets -1..2) and weights for fractions ``t`` in [0, 1)."""
    if kind == "linear":
        return np.array([0, 1]), np.stack([1.0 - t, t], axis=1)
    w = np.stack([((-0.5 * t + 1.0) * t - 0.5) * t,
                  (1.5 * t - 2.5) * t * t + 1.0,
                  ((-1.5 * t + 2.0) * t + 0.5) * t,
                  (0.5 * t - 0.5) * t * t], axis=1)          # Keys cubic, a = -0.5
    return np.array([-1, 0, 1, 2]), w


def _shift_stack(stack, sy, sx, kind="cubic"):
    """Shift every image of ``stack`` (n, h, w) by its own (sy, sx): out[y] = in[y - s].

    Separable Keys-cubic (or linear) interpolation with zeros outside,
    vectorised over the stack; shifts must be within +-2 pixels. Stars are
    grouped by their whole-pixel offset so that every tap is a slice (no
    gathers); the sums are those of the per-pixel formula, in the same order.
    """
    n, h, w = stack.shape
    pad = 4
    a = np.zeros((n, h + 2 * pad, w + 2 * pad))
    a[:, pad:pad + h, pad:pad + w] = stack
    tmp = _shift_axis(a, np.asarray(sx, float), kind, pad, w, axis=2)
    return _shift_axis(tmp, np.asarray(sy, float), kind, pad, h, axis=1)


def _shift_axis(a, s, kind, pad, size, axis):
    """``a`` (padded by ``pad`` along ``axis``) shifted by ``s`` per image along
    ``axis`` and cut to ``size`` there."""
    q0 = np.floor(-s)
    taps, wts = _shift_weights(-s - q0, kind)
    q = q0.astype(int)
    length = a.shape[axis]
    lo, hi = (q.min() + taps.min() + pad, q.max() + taps.max() + pad + size) if q.size else (0, 0)
    out_shape = list(a.shape)
    out_shape[axis] = size
    out = np.zeros(out_shape)
    if lo < 0 or hi > length:       # beyond the padding: clipped gathers
        star = np.arange(a.shape[0])[:, None, None]
        base = np.arange(size)[None, :] + pad + q[:, None]
        for k, tap in enumerate(taps):
            idx = np.clip(base + tap, 0, length - 1)
            if axis == 2:
                out += wts[:, k, None, None] * a[star, np.arange(a.shape[1])[None, :, None], idx[:, None, :]]
            else:
                out += wts[:, k, None, None] * a[star, idx[:, :, None], np.arange(a.shape[2])[None, None, :]]
        return out
    for qv in np.unique(q):
        sel = np.flatnonzero(q == qv)
        acc = np.zeros((sel.size,) + tuple(out_shape[1:]))
        sub = a[sel]
        for k, tap in enumerate(taps):
            start = pad + qv + tap
            part = sub[:, :, start:start + size] if axis == 2 else sub[:, start:start + size, :]
            acc += wts[sel, k, None, None] * part
        out[sel] = acc
    return out


def _normalise_and_centre(coef, osf, fwhm, recentre=True, zero_ring=True):
    """Zero outer ring, unit flux at every position, and the constant term's
    centroid on the grid centre.

    The outer ring (the last image pixel of the grid) fixes the level that a
    per-star local background would otherwise leave undetermined.
    """
    wf = coef.shape[1]
    cf = (wf - 1) / 2.0
    yy, xx = np.mgrid[0:wf, 0:wf]
    if zero_ring:
        ring = np.maximum(np.abs(xx - cf), np.abs(yy - cf)) > cf - osf
        coef = coef - coef[:, ring].mean(axis=1)[:, None, None]
    total = coef[0].sum()
    if not np.isfinite(total) or total <= 0:
        raise FitError("PSF estimation diverged (the model has no positive flux).")
    # Image-pixel stamps sum to coef.sum() / osf**2: make that 1, and the
    # variation terms flux-free.
    out = coef * (osf * osf / total)
    for c in range(1, coef.shape[0]):
        out[c] -= out[0] * (out[c].sum() / out[0].sum())
    if not recentre:
        return out
    sig = max(fwhm, 1.0) / 2.3548 * osf
    win = np.exp(-((xx - cf) ** 2 + (yy - cf) ** 2) / (2 * sig * sig))
    wm = win * out[0]
    s = wm.sum()
    if s > 0:
        cx = (wm * xx).sum() / s - cf
        cy = (wm * yy).sum() / s - cf
        if abs(cx) > 1e-4 or abs(cy) > 1e-4:
            out = np.array([ndimage.shift(c, (-cy, -cx), order=3, mode="constant") for c in out])
    return out
