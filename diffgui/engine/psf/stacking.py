"""The effective-PSF stack: star stamps binned on the model grid, refined iteratively.

:func:`stack_stars` is the loop; each iteration computes weighted residuals of the
current model, solves a small least-squares problem per model-grid bin, fills empty
bins, renormalises, then refits the stars' fluxes and positions and clips outliers.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from diffgui.engine.errors import FitError, check_cancel
from diffgui.engine.psf.denoise import _denoise
from diffgui.engine.psf.grid import _model_values, _normalise_and_centre, _shift_stack
from diffgui.engine.psf.model import poly_terms

FIT_LOCAL_BACKGROUND = True
MODEL_FLOOR = 0.02
SYMMETRIC_CENTRES = True


def stack_stars(data, noise, bad, obj, idx, neighbours, half, osf, order, fwhm, niter, x0, sx, y0,
                sy, cancel, log, denoise=True):
    """Iterative effective-PSF stack with per-pixel polynomial variation.

    Every star pixel is a sample of the effective PSF at its offset from the
    star centre. Samples are binned on the model grid (``osf`` bins per image
    pixel) and the model is refined from the residuals of the current model
    interpolated at the exact offsets, which removes the binning blur. Star
    positions and fluxes are refitted with the model between iterations.

    Returns ``(coef, info)``: the model ``(ncoeffs, wf, wf)`` and ``{'nstars': n}``.
    """
    st = _cut_stamps(data, noise, bad, obj, idx, neighbours, half, fwhm)
    wf = 2 * osf * half + 1
    cf = osf * half
    terms = poly_terms((st.xs - x0) / sx, (st.ys - y0) / sy, order).T       # (nst, nc)
    nc = terms.shape[1]
    coef = np.zeros((nc, wf, wf))
    star_ok = np.ones(idx.size, bool)
    gy, gx = np.meshgrid(st.k, st.k, indexing="ij")
    gx = np.broadcast_to(gx, st.d.shape)
    gy = np.broadcast_to(gy, st.d.shape)
    clip = np.ones(st.d.shape, bool)
    core = np.broadcast_to(gx ** 2 + gy ** 2 <= max(fwhm, 1.5) ** 2, st.d.shape)
    last = max(1, int(niter))
    for it in range(last + 1):
        check_cancel(cancel)
        fx, fy, inside = _fine_coords(gx, gy, st, osf, cf, wf)
        if it == 0:
            mval = np.zeros(st.d.shape)
        else:
            mval, _, _ = _model_values(coef, terms, fx, fy, need_grad=False)
        b, ws, rs, t = _weighted_residuals(st, mval, clip, star_ok, inside, terms, fx, fy, osf, wf)
        A, good, delta = _solve_bins(b, ws, rs, t, wf * wf, nc)
        coef += delta.T.reshape(nc, wf, wf)
        if not good.all():
            _fill_holes(coef, good, wf)
        coef = _normalise_and_centre(coef, osf, fwhm)
        if it == last:
            if denoise:
                cov = np.zeros((wf * wf, nc))
                cov[good] = np.diagonal(np.linalg.inv(A[good]), axis1=1, axis2=2)
                coef = _denoise(coef, np.sqrt(cov.T.reshape(nc, wf, wf)) * (osf * osf), osf, fwhm)
            break
        mval, okfit = _refit_stars(st, coef, terms, fx, fy, osf, clip)
        clip, star_ok = _reject_outliers(st, mval, okfit, star_ok, inside, core, nc)
    log(f"PSF: {star_ok.sum()} stars kept after {niter} iterations")
    return coef, {"nstars": int(star_ok.sum())}


def _cut_stamps(data, noise, bad, obj, idx, neighbours, half, fwhm=0.0):
    """Stamps of the selected stars with their variances and weights (0 on bad
    pixels and on the masked disks of neighbours, except within ``fwhm`` of
    the star itself), and the stars' starting positions and fluxes, as one
    namespace."""
    hh = half + 1  # cut one more pixel: offsets reach +-(half + 0.5)
    xs = np.asarray(obj["x"], float)[idx].copy()
    ys = np.asarray(obj["y"], float)[idx].copy()
    fl = np.asarray(obj["flux"], float)[idx].copy()
    ix = np.round(xs).astype(int)
    iy = np.round(ys).astype(int)
    k = np.arange(-hh, hh + 1)
    rows = iy[:, None] + k[None, :]
    cols = ix[:, None] + k[None, :]
    d = data[rows[:, :, None], cols[:, None, :]]                     # (nst, size, size)
    var = noise[rows[:, :, None], cols[:, None, :]] ** 2
    wgt = np.where(bad[rows[:, :, None], cols[:, None, :]] | ~np.isfinite(var) | (var <= 0), 0.0, 1.0)
    # Neighbours: mask a disk around each, out to where its light is negligible.
    ox_all = np.asarray(obj["x"], float)
    oy_all = np.asarray(obj["y"], float)
    for s, nb in enumerate(neighbours):
        if not nb:
            continue
        # The star's own core is never masked (selection bounded the
        # neighbours' light there).
        outside = (cols[s][None, :] - xs[s]) ** 2 + (rows[s][:, None] - ys[s]) ** 2 >= fwhm * fwhm
        for j, rr in nb:
            dxn = (cols[s][None, :] - ox_all[j])
            dyn = (rows[s][:, None] - oy_all[j])
            wgt[s][(dxn ** 2 + dyn ** 2 < rr * rr) & outside] = 0.0
    var = np.where(wgt > 0, var, 1.0)
    return SimpleNamespace(d=d, var=var, wgt=wgt, k=k, xs=xs, ys=ys, fl=fl, ix=ix, iy=iy,
                           bg=np.zeros(idx.size))


def _fine_coords(gx, gy, st, osf, cf, wf):
    """Model-grid coordinates of every stamp pixel and which fall on the grid."""
    offx = gx + (st.ix - st.xs)[:, None, None]                           # pixel - centre
    offy = gy + (st.iy - st.ys)[:, None, None]
    fx = offx * osf + cf
    fy = offy * osf + cf
    bx = np.round(fx).astype(int)
    by = np.round(fy).astype(int)
    inside = (bx >= 0) & (bx < wf) & (by >= 0) & (by < wf)
    if osf == 1:
        inside = np.ones(st.d.shape, bool)    # shifted, then cropped below
    return fx, fy, inside


def _weighted_residuals(st, mval, clip, star_ok, inside, terms, fx, fy, osf, wf):
    """Normalised residual samples ``rs``, their weights ``ws``, model-grid bins ``b``
    and polynomial terms ``t`` (one row per sample)."""
    nc = terms.shape[1]
    norm = (st.d - st.bg[:, None, None]) / st.fl[:, None, None]
    res = norm - mval
    # Weights of the normalised samples, with a fractional floor so the
    # brightest stars do not dominate through tiny model errors.
    w_s = st.wgt * clip * star_ok[:, None, None] * inside / (
        st.var / st.fl[:, None, None] ** 2 + (MODEL_FLOOR * np.abs(mval)) ** 2 + 1e-30)
    nb = wf * wf
    if osf == 1:
        # Shift each residual stamp onto the centred grid (cubic spline):
        # unlike nearest-pixel binning this does not blur, so few
        # iterations suffice on well-sampled images.
        sy_, sx_ = st.iy - st.ys, st.ix - st.xs
        rsh = _shift_stack(np.where(w_s > 0, res, 0.0), sy_, sx_, "cubic")
        cov_s = _shift_stack((w_s > 0).astype(float), sy_, sx_, "cubic")
        wsh = np.where(cov_s > 0.999, _shift_stack(w_s, sy_, sx_, "linear"), 0.0)
        inner = (slice(None), slice(1, -1), slice(1, -1))
        rsh, wsh = rsh[inner], wsh[inner]
        b = np.broadcast_to(np.arange(nb).reshape(wf, wf), rsh.shape).ravel()
        ws = wsh.ravel()
        rs = rsh.ravel()
        t = np.broadcast_to(terms[:, None, None, :], rsh.shape + (nc,)).reshape(-1, nc)
    else:
        bx = np.round(fx).astype(int)
        by = np.round(fy).astype(int)
        b = (by * wf + bx)[inside]
        ws = w_s[inside]
        rs = res[inside]
        t = np.broadcast_to(terms[:, None, None, :], st.d.shape + (nc,))[inside]   # (ns, nc)
    return b, ws, rs, t


def _solve_bins(b, ws, rs, t, nb, nc):
    """Per model-grid bin, the weighted least-squares correction of the
    polynomial coefficients: ``(normal matrices, solved bins, delta (nb, nc))``."""
    A = np.zeros((nb, nc, nc))
    rhs = np.zeros((nb, nc))
    for a in range(nc):
        rhs[:, a] = np.bincount(b, ws * t[:, a] * rs, minlength=nb)
        for c in range(a, nc):
            A[:, a, c] = A[:, c, a] = np.bincount(b, ws * t[:, a] * t[:, c], minlength=nb)
    cover = A[:, 0, 0]
    good = cover > 0
    # Small ridge on the variation terms keeps thinly covered bins stable.
    ridge = 1e-6 * np.maximum(cover, 1e-30)
    A[:, range(nc), range(nc)] += ridge[:, None]
    delta = np.zeros((nb, nc))
    delta[good] = np.linalg.solve(A[good], rhs[good][..., None])[..., 0]
    return A, good, delta


def _fill_holes(coef, good, wf):
    """Fill (in place) bins no star sampled from their neighbours: the mean of
    the sampled bins of the 3x3 neighbourhood (edges repeated), 0 when none is.

    Vectorised, and bit-identical to ``generic_filter(..., np.nanmean, size=3,
    mode='nearest')`` (numpy's summation order of 9 values is reproduced).
    """
    holes = ~good.reshape(wf, wf)
    ok = np.pad(~holes, 1, mode="edge")
    cnt = sum(ok[1 + dy:1 + dy + wf, 1 + dx:1 + dx + wf].astype(np.intp)
              for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    for c in range(coef.shape[0]):
        img_c = coef[c]
        a = np.pad(np.where(holes, 0.0, img_c), 1, mode="edge")
        v = [a[1 + dy:1 + dy + wf, 1 + dx:1 + dx + wf] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        tot = (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))) + v[8]
        with np.errstate(invalid="ignore", divide="ignore"):
            filled = tot / cnt
        img_c[holes] = np.nan_to_num(filled[holes])


def _refit_stars(st, coef, terms, fx, fy, osf, clip):
    """Refit each star's flux, position and local background with the current
    model (updating ``st``); returns the fitted model values and which fits worked."""
    # Positions come from the model's point-symmetric part: fitting them
    # with the full model lets noise in the model and the positions
    # co-adapt (a drifting, skewed core); the symmetric part defines a
    # centre that noise cannot pull.
    fitcoef = 0.5 * (coef + coef[:, ::-1, ::-1]) if SYMMETRIC_CENTRES else coef
    mval, gxv, gyv = _model_values(fitcoef, terms, fx, fy, need_grad=True)
    wfit = st.wgt * clip / st.var
    F, ddx, ddy, B = _fit_stars(st.d, mval, gxv * osf, gyv * osf, wfit)
    okfit = np.isfinite(F) & (F > 0) & np.isfinite(ddx) & np.isfinite(ddy) & np.isfinite(B)
    st.fl = np.where(okfit, F, st.fl)
    st.bg = np.where(okfit, B, st.bg) if FIT_LOCAL_BACKGROUND else st.bg
    st.xs = np.where(okfit, st.xs + np.clip(ddx, -0.3, 0.3), st.xs)
    st.ys = np.where(okfit, st.ys + np.clip(ddy, -0.3, 0.3), st.ys)
    okfit &= (np.abs(st.xs - st.ix) <= 1.0) & (np.abs(st.ys - st.iy) <= 1.0)
    return mval, okfit


def _reject_outliers(st, mval, okfit, star_ok, inside, core, nc):
    """Clip outlier pixels and reject stars the model does not fit:
    ``(pixel keep mask, star keep mask)``."""
    d, var, wgt = st.d, st.var, st.wgt
    model_pix = st.fl[:, None, None] * mval + st.bg[:, None, None]
    sig2 = var + (MODEL_FLOOR * np.abs(model_pix)) ** 2
    z = (d - model_pix) / np.sqrt(sig2)
    # Outlier pixels (cosmic rays, neighbours, defects) are far off even
    # allowing a 10 % model error; smaller deviations are model errors
    # that the next iteration corrects.
    zc = (d - model_pix) / np.sqrt(var + (0.1 * np.abs(model_pix)) ** 2)
    # Never clip the core: a model error there would otherwise remove the
    # core from every star and the stack could not recover.
    clip = (np.abs(zc) < 5.0) | (wgt == 0) | core
    npx = np.maximum((wgt * inside > 0).sum(axis=(1, 2)), 1)
    chi2 = ((z ** 2) * wgt * inside * clip).sum(axis=(1, 2)) / npx
    nclip = ((~clip) & (wgt > 0) & inside).sum(axis=(1, 2)) / npx
    ref = star_ok & okfit if (star_ok & okfit).any() else okfit
    med = np.median(chi2[ref]) if ref.any() else 1.0
    medc = np.median(nclip[ref]) if ref.any() else 0.0
    star_ok = okfit & (chi2 < max(3.0 * med, 2.0)) & (nclip <= max(0.05, 3.0 * medc))
    if star_ok.sum() < max(3, nc):
        raise FitError(f"PSF estimation: only {star_ok.sum()} stars are consistent with the model.")
    return clip, star_ok


def _fit_stars(d, m, gx, gy, w):
    """Per star, weighted least squares of ``d = F m - a gx - c gy + b`` (a = F dx).

    ``gx``/``gy`` are model gradients per image pixel; returns F, dx, dy and
    the local background b.
    """
    basis = (m, -gx, -gy, np.ones_like(m))
    A = np.empty((d.shape[0], 4, 4))
    r = np.empty((d.shape[0], 4))
    for i in range(4):
        r[:, i] = (w * basis[i] * d).sum(axis=(1, 2))
        for j in range(i, 4):
            A[:, i, j] = A[:, j, i] = (w * basis[i] * basis[j]).sum(axis=(1, 2))
    sol = np.full((d.shape[0], 4), np.nan)
    ok = np.linalg.cond(A) < 1e12
    if ok.any():
        sol[ok] = np.linalg.solve(A[ok], r[ok][..., None])[..., 0]
    F = sol[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return F, sol[:, 1] / F, sol[:, 2] / F, sol[:, 3]

