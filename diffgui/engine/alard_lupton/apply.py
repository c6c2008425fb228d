"""Applying a fitted kernel to a region: convolved image, difference, noise and
mask, tile by tile."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np

from diffgui.engine.alard_lupton.basis import poly_terms
from diffgui.engine.alard_lupton.convolution import _SPARSE_BAD, _WORKERS, _tile_plan, _window
from diffgui.engine.alard_lupton.kernel import SpatialKernel
from diffgui.engine.alard_lupton.stamps import _Side
from diffgui.engine.common import fft as _fft
from diffgui.engine.errors import check_cancel

# ---- applying the kernel -------------------------------------------------------------------

def _apply_region(kernel: SpatialKernel, k: int, conv: _Side, targ: _Side, outs, opts, nthreads,
                  want_conv, cancel=None):
    """Convolve, subtract, and compute the noise and bad-pixel mask over region ``k``'s
    good area, tile by tile (tiles on ``_WORKERS`` threads); the region's statistics
    (HOTPANTS's header values) go into ``reg.stats``."""
    reg = kernel.regions[k]
    tiles, fshape = _tile_plan(reg.good, kernel.r)
    # Tiles run in parallel threads with one FFT thread each: on a busy machine
    # multi-threaded FFTW costs 2-4x the CPU of single-threaded transforms.
    workers = min(_WORKERS, _fft.resolve_threads(nthreads), len(tiles))
    if workers > 1:
        nthreads = 1
    ctx = _region_context(kernel, k, conv, targ, opts, fshape, nthreads)
    diff, noise, convd, omask = outs
    sums = np.zeros(6)
    lock = threading.Lock()

    def tile(t):
        check_cancel(cancel)
        ty0, ty1, tx0, tx1 = t
        sl = (slice(ty0, ty1), slice(tx0, tx1))
        d, sd, bad, model, part = _apply_tile(ctx, t)
        diff[sl] = d
        noise[sl] = sd
        omask[sl] = bad
        if want_conv:
            convd[sl] = model
        with lock:
            sums[:] += part

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(tile, tiles))
    else:
        for t in tiles:
            tile(t)
    n, sd_, sdd, sn, npos, sx2 = sums
    reg.stats.update(ngood=int(n), dmean=sd_ / n if n else 0.0,
                     dsige=math.sqrt(max(sdd / n - (sd_ / n) ** 2, 0.0)) if n else 0.0,
                     dsig=sn / n if n else 0.0, nx2nrm=int(npos),
                     x2nrm=sx2 / npos if npos else float("nan"))


def _region_context(kernel, k, conv, targ, opts, fshape, nthreads):
    """Everything the tiles of region ``k`` share: kernel spectra per polynomial term,
    the reference kernel for the noise (``K_ref**2``) and bad-pixel spread
    (``|K_ref|``), background coefficients and output options."""
    reg = kernel.regions[k]
    FK = [_fft.rfft2(_fft.kernel_to_origin(q, fshape), nthreads) for q in kernel.poly_kernels(k)]
    # The noise of the convolved image is var (x) K_ref^2 with the kernel at the
    # region centre, scaled by the local sum of K^2 (exact on smooth sky), and
    # the bad-pixel spread uses |K_ref|.
    gx0, gx1, gy0, gy1 = reg.good
    xc, yc = 0.5 * (gx0 + gx1), 0.5 * (gy0 + gy1)
    kref = np.tensordot(kernel.amplitudes(xc, yc, k), kernel.basis.images, axes=(0, 0))
    ref2 = float(np.sum(kref * kref))
    FK2 = _fft.rfft2(_fft.kernel_to_origin(kref * kref, fshape), nthreads)
    aKn = np.abs(kref) / np.abs(kref).sum()
    FKA = _fft.rfft2(_fft.kernel_to_origin(aKn, fshape), nthreads)
    return SimpleNamespace(
        kernel=kernel, k=k, reg=reg, r=kernel.r, shape=kernel.shape, conv=conv, targ=targ,
        fshape=fshape, nthreads=nthreads, FK=FK, terms=poly_terms(kernel.ko),
        bgterms=poly_terms(kernel.bgo), bgc=reg.coeffs[kernel.ncoeff - kernel.nbg:],
        ref2=ref2, FK2=FK2, aKn=aKn, FKA=FKA, ksum=reg.coeffs[0], norm=kernel.normalizes(k),
        kfm=float(opts["kfm"]), fill=float(opts["fi"]), fill_noise=float(opts["fin"]),
        blank=float(opts.get("mous", 1.0)) >= 0, conv_is_template=reg.convolved == "TEMPLATE")


def _apply_tile(ctx, t):
    """Difference, noise, bad mask, model (convolved image) and the statistics
    partial sums of one tile."""
    ty0, ty1, tx0, tx1 = t
    r = ctx.r
    hy, hx = ty1 - ty0, tx1 - tx0
    sl = (slice(ty0, ty1), slice(tx0, tx1))
    cs = (slice(r, r + hy), slice(r, r + hx))
    xs, ys = np.arange(tx0, tx1), np.arange(ty0, ty1)
    xn, yn = ctx.reg.norm_xy(xs, ys)
    model = _tile_model(ctx, t, cs, xn, yn)
    vwin = _var_window(ctx.conv, ty0, ty1, tx0, tx1, r, ctx.fshape)
    cvar = _fft.irfft2(_fft.rfft2(vwin, ctx.nthreads) * ctx.FK2, ctx.fshape, ctx.nthreads)[cs]
    del vwin
    if ctx.kernel.ko > 0:
        cvar *= _ksq_ratio(ctx.kernel, ctx.k, xs, ys, ctx.ref2)
    np.maximum(cvar, 0.0, out=cvar)
    tdata = ctx.targ.values(sl)
    d = tdata - model if ctx.conv_is_template else model - tdata
    v = ctx.targ.var(sl, values=tdata)
    v += cvar
    del cvar
    bad = _tile_bad(ctx, t, sl, cs)
    sd = np.sqrt(v, out=v)
    if ctx.norm:
        d /= ctx.ksum
        sd /= ctx.ksum
        model /= ctx.ksum
    # Statistics of the good pixels, for the header (HOTPANTS's X2NRM, DSIG...).
    good = ~bad
    gd = np.where(good, d, 0.0).ravel()
    q = np.divide(gd, sd.ravel(), out=np.zeros_like(gd), where=good.ravel() & (sd.ravel() > 0))
    part = np.array([np.count_nonzero(good), gd.sum(), np.dot(gd, gd),
                     np.sum(sd, where=good), np.count_nonzero(q), np.dot(q, q)])
    del gd, q
    if ctx.blank:
        d[bad] = ctx.fill
        sd[bad] = ctx.fill_noise
    return d, sd, bad, model, part


def _tile_model(ctx, t, cs, xn, yn):
    """The convolved image plus background on one tile: sum over polynomial terms of
    ``x**i y**j (image (*) K_ij)``."""
    ty0, ty1, tx0, tx1 = t
    conv, fshape, nthreads = ctx.conv, ctx.fshape, ctx.nthreads
    win = _window(conv.data, ty0, ty1, tx0, tx1, ctx.r, fshape,
                  fill=None if conv.all_finite else conv.fill)
    if conv.masked is not None:
        # Masked pixels (user masks, hot pixels) may hold anything: convolve the
        # fill value instead, so that they do not leak beyond the kfm-masked core.
        win[_window(conv.masked, ty0, ty1, tx0, tx1, ctx.r, fshape, fill=None) > 0] = conv.fill
    F = _fft.rfft2(win, nthreads)
    del win
    model = None
    for (i, j), fk in zip(ctx.terms, ctx.FK):
        c = _fft.irfft2(F * fk, fshape, nthreads)[cs]
        if j:
            c *= (yn ** j)[:, None]
        if i:
            c *= (xn ** i)[None, :]
        if model is None:
            model = np.ascontiguousarray(c)
        else:
            model += c
    del F, c
    # Background: sum_ij c_ij x^i y^j = sum_i x^i (sum_j c_ij y^j), an outer product sum.
    for i in range(ctx.kernel.bgo + 1):
        col = sum(cb * yn ** jj for (ii, jj), cb in zip(ctx.bgterms, ctx.bgc) if ii == i)
        model += np.multiply.outer(col, xn ** i)
    return model


def _tile_bad(ctx, t, sl, cs):
    """Bad output pixels of one tile: unconvolved-image bad pixels, convolved-image bad
    pixels holding more than (1 - kfm) of sum|K|, and the r-wide image border."""
    ty0, ty1, tx0, tx1 = t
    r, conv = ctx.r, ctx.conv
    ny, nx = ctx.shape
    hy, hx = ty1 - ty0, tx1 - tx0
    bad = ctx.targ.bad[sl].copy()
    ya, xa = max(0, ty0 - r), max(0, tx0 - r)
    by, bx = np.nonzero(conv.bad[ya:ty1 + r, xa:tx1 + r])
    if by.size:
        # Share of sum|K| coming from bad convolved-image pixels.
        by, bx = by + (ya - ty0), bx + (xa - tx0)  # tile coordinates
        if by.size < _SPARSE_BAD * hy * hx:
            # Few bad pixels: add their |K| footprints directly (index = tile + 2r).
            frac = np.zeros((hy + 4 * r, hx + 4 * r))
            for yb, xb in zip(by + r, bx + r):
                frac[yb:yb + 2 * r + 1, xb:xb + 2 * r + 1] += ctx.aKn
            frac = frac[2 * r:2 * r + hy, 2 * r:2 * r + hx]
        else:
            bwin = _window(conv.bad, ty0, ty1, tx0, tx1, r, ctx.fshape, fill=None)
            frac = _fft.irfft2(_fft.rfft2(bwin, ctx.nthreads) * ctx.FKA, ctx.fshape,
                               ctx.nthreads)[cs]
        bad |= frac > (1.0 - ctx.kfm) + 1e-9
    bad[:, :max(0, r - tx0)] = True
    bad[:max(0, r - ty0), :] = True
    if tx1 > nx - r:
        bad[:, max(0, (nx - r) - tx0):] = True
    if ty1 > ny - r:
        bad[max(0, (ny - r) - ty0):, :] = True
    return bad


def _var_window(side: _Side, ty0, ty1, tx0, tx1, r, fshape):
    ny, nx = side.data.shape
    ya, yb = max(0, ty0 - r), min(ny, ty1 + r)
    xa, xb = max(0, tx0 - r), min(nx, tx1 + r)
    v = side.var((slice(ya, yb), slice(xa, xb)))
    if side.sigma is not None:
        v = np.where(np.isfinite(v), v, 0.0)
    buf = np.zeros(fshape)
    oy, ox = ya - (ty0 - r), xa - (tx0 - r)
    buf[oy:oy + v.shape[0], ox:ox + v.shape[1]] = v
    return buf


def _ksq_ratio(kernel, k, xs, ys, ref, step=32):
    """sum K(x, y)^2 / ref on the tile grid, bilinear from nodes every ``step`` px."""
    gx = np.unique(np.r_[xs[::step], xs[-1]]).astype(float)
    gy = np.unique(np.r_[ys[::step], ys[-1]]).astype(float)
    XX, YY = np.meshgrid(gx, gy)
    s2 = kernel.sum_sq(XX, YY, k) / ref
    return _lerp_matrix(ys, gy) @ s2 @ _lerp_matrix(xs, gx).T


def _lerp_matrix(t, grid):
    """Matrix W (len(t), len(grid)) of linear interpolation weights."""
    W = np.zeros((len(t), len(grid)))
    if len(grid) == 1:
        W[:, 0] = 1.0
        return W
    i = np.clip(np.searchsorted(grid, t, side="right") - 1, 0, len(grid) - 2)
    w = (t - grid[i]) / (grid[i + 1] - grid[i])
    rows = np.arange(len(t))
    W[rows, i] = 1 - w
    W[rows, i + 1] = w
    return W

