"""ZOGY's flux-scale and sub-pixel shift fit (errors-in-variables least squares on D)."""

from __future__ import annotations

import numpy as np

from diffgui.engine.common import fft
from diffgui.engine.errors import FitError, check_cancel
from diffgui.engine.zogy.fourier import _rfft_weights, _shift_phase


def fit_scale_shift(Nh, Rh, Pnh, Prh, an2, ar2, sig_n, sig_r, F, sx, sy, fit_mask, m, pshape,
                    do_scale, do_shift, max_iter, nt, cancel, log, bg_terms=0):
    """Fit F_r, the template shift and a background difference by minimising
    ``sum(D_u**2)`` over ``fit_mask``.

    With ``T_s = ifft(P_R N g)`` and ``T_t = ifft(P_N R e(s) g)`` for a fixed
    ``g = 1 / den(F0)``, ``D_u = F T_s - T_t`` and a small extra shift is
    ``T_t(x + ds) ~ T_t + ds . grad T_t``. The noise of ``F T_s - T_t`` has
    the variance ``F**2 v_s + v_t`` per pixel (Parseval), so the objective

        sum((F T_s - T_t - ds . grad T_t)**2) / (F**2 v_s + v_t)

    is an errors-in-variables (total least squares) criterion: unbiased by
    the noise of either image. With ``bg_terms`` 1 or 3 a constant (and a
    plane) joins the shift as linear parameters: the sky estimates of a
    crowded field differ by a fraction of the unresolved starlight, and
    without them that offset biases F. The minimum over the linear
    parameters is closed-form, over F a scalar function of a few dot
    products. Each pass costs two
    FFTs; another pass (with ``g`` and the shift updated) follows only when
    the shift moved by more than 0.02 px.
    """
    npar = int(do_scale) + 2 * int(do_shift) + int(bg_terms)
    n_fit = int(np.count_nonzero(fit_mask))
    if n_fit <= 10 + npar:
        raise FitError(
            f"only {n_fit} usable pixels for the flux-scale/shift fit: pass scale= and "
            "fit_scale=False/fit_shift=False, or give good_regions covering unmasked stars."
        )
    sel = None if fit_mask.all() else fit_mask
    info = {"fit_scale": do_scale, "fit_shift": do_shift, "iterations": 0, "converged": False}
    F0, sx0, sy0 = F, sx, sy
    errs = {}
    for it in range(max(1, min(int(max_iter), 5))):
        check_cancel(cancel)
        Ts, Tt, v_s, v_t = _pass_images(Nh, Rh, Pnh, Prh, an2, ar2, sig_n, sig_r, F, sx, sy,
                                        pshape, nt)
        a, b, c, u, wv, M = _dot_products(Ts, Tt, sel, m, fit_mask.shape, do_shift, bg_terms)
        del Ts, Tt
        obj = _Objective(a, b, c, u, wv, M, v_s, v_t, do_shift)
        F_new = obj.best_scale(F) if do_scale else F
        ds = obj.shift_of(F_new)
        errs.update(obj.errors(F_new, n_fit, npar, do_scale))
        F = F_new
        if do_shift:
            sx = float(np.clip(sx + ds[0], -0.5, 0.5))
            sy = float(np.clip(sy + ds[1], -0.5, 0.5))
        info["iterations"] = it + 1
        # The scale of each pass is unbiased whatever g was; only the linearised
        # shift needs another pass when it moved by more than a small amount.
        if not do_shift or max(abs(ds[0]), abs(ds[1])) < 0.02:
            info["converged"] = True
            break
    F, sx, sy = _apply_fallbacks(info, errs, F, sx, sy, F0, sx0, sy0, do_scale, do_shift, log)
    log(f"ZOGY: fit after {info['iterations']} passes: F_r={F:.5f} shift=({sx:+.4f}, {sy:+.4f})")
    info.update(scale=F, shift=(sx, sy))
    return F, sx, sy, info


def _pass_images(Nh, Rh, Pnh, Prh, an2, ar2, sig_n, sig_r, F, sx, sy, pshape, nt):
    """``T_s``, ``T_t`` (padded grid) and their per-pixel noise variances ``v_s``, ``v_t``."""
    wts = _rfft_weights(pshape)[None, :]
    npix = float(pshape[0] * pshape[1])
    tiny = np.finfo(float).tiny
    s2n, s2r = sig_n * sig_n, sig_r * sig_r
    g = 1.0 / np.sqrt(np.maximum((s2n * F * F) * ar2 + s2r * an2, tiny))
    v_s = s2n * float(np.sum(ar2 * g * g * wts) / npix)
    v_t = s2r * float(np.sum(an2 * g * g * wts) / npix)
    tmp = Prh * Nh
    tmp *= g
    Ts = fft.irfft2(tmp, pshape, nt)
    np.multiply(Pnh, Rh, out=tmp)
    tmp *= g
    del g
    if sx or sy:
        tmp *= _shift_phase(pshape, sx, sy)
    Tt = fft.irfft2(tmp, pshape, nt)
    return Ts, Tt, v_s, v_t


def _dot_products(Ts, Tt, sel, m, shape, do_shift, bg_terms=0):
    """Dot products of ``T_s``, ``T_t`` and the linear basis (``grad T_t``, then
    1, x, y for the background) over the fit pixels, a block of rows at a
    time (no image-sized temporaries)."""
    h, w = shape
    xs = slice(m, m + w)
    nlin = 2 * int(do_shift) + int(bg_terms)
    a = b = c = 0.0
    u = np.zeros(nlin)
    wv = np.zeros(nlin)
    M = np.zeros((nlin, nlin))
    xn = (np.arange(w) - (w - 1) / 2.0) / w
    step_rows = max(1, 1_000_000 // max(w, 1))
    for r0 in range(0, h, step_rows):
        r1 = min(h, r0 + step_rows)
        rs = slice(m + r0, m + r1)
        msk = None if sel is None else sel[r0:r1]

        def blk(arr):
            return arr.ravel() if msk is None else arr[msk]

        ts = blk(Ts[rs, xs])
        tt = blk(Tt[rs, xs])
        a += float(ts @ ts)
        b += float(ts @ tt)
        c += float(tt @ tt)
        if not nlin:
            continue
        q = []
        if do_shift:
            # central differences; the margin provides the neighbours
            q.append(blk(Tt[rs, m + 1:m + w + 1] - Tt[rs, m - 1:m + w - 1]) * 0.5)
            q.append(blk(Tt[m + r0 + 1:m + r1 + 1, xs] - Tt[m + r0 - 1:m + r1 - 1, xs]) * 0.5)
        if bg_terms:
            q.append(np.ones(ts.size))
        if bg_terms > 1:
            q.append(blk(np.broadcast_to(xn, (r1 - r0, w))))
            q.append(blk(np.broadcast_to(((np.arange(r0, r1) - (h - 1) / 2.0) / h)[:, None],
                                         (r1 - r0, w))))
        Q = np.array(q)
        M += Q @ Q.T
        u += Q @ ts
        wv += Q @ tt
    return a, b, c, u, wv, M


class _Objective:
    """The objective of one pass as a function of F (the shift minimised out)."""

    def __init__(self, a, b, c, u, wv, M, v_s, v_t, do_shift):
        self.a, self.b, self.c, self.u, self.wv = a, b, c, u, wv
        self.v_s, self.v_t, self.do_shift = v_s, v_t, do_shift
        self.nlin = len(u)
        self.Minv = None
        if self.nlin:
            try:
                self.Minv = np.linalg.inv(M)
            except np.linalg.LinAlgError:
                raise FitError("the shift fit is singular: no structure in the fit region.") from None

    def shift_of(self, Fv):
        return (self.Minv @ (Fv * self.u - self.wv))[:2] if self.do_shift else np.zeros(2)

    def phi(self, Fv):
        num = Fv * Fv * self.a - 2 * Fv * self.b + self.c
        if self.nlin:
            q = Fv * self.u - self.wv
            num -= float(q @ self.Minv @ q)
        return num / (Fv * Fv * self.v_s + self.v_t)

    def best_scale(self, F):
        from scipy.optimize import minimize_scalar

        if self.a <= 0:
            raise FitError("the flux-scale fit has no signal in the fit region.")
        res = minimize_scalar(self.phi, bounds=(0.2 * F, 5.0 * F), method="bounded",
                              options={"xatol": 1e-7 * F})
        return float(res.x)

    def errors(self, F_new, n_fit, npar, do_scale):
        """Formal errors from the curvature of the objective (chi2 per pixel ~ 1)."""
        phi = self.phi
        errs = {}
        dof_chi2 = max(phi(F_new) / max(n_fit - npar, 1), 1e-300)
        if do_scale:
            hF = 1e-4 * F_new
            curv = (phi(F_new + hF) - 2 * phi(F_new) + phi(F_new - hF)) / hF ** 2
            errs["scale"] = float(np.sqrt(2 * dof_chi2 / curv)) if curv > 0 else np.inf
        if self.do_shift:
            cov = self.Minv[:2, :2] * (F_new * F_new * self.v_s + self.v_t) * dof_chi2
            errs["shift"] = tuple(float(v) for v in np.sqrt(np.maximum(np.diag(cov), 0)))
        return errs


def _apply_fallbacks(info, errs, F, sx, sy, F0, sx0, sy0, do_scale, do_shift, log):
    """Keep the starting scale/shift when the fitted one is poorly constrained."""
    if do_scale:
        info["scale_err"] = errs.get("scale", np.inf)
        if not np.isfinite(F) or not info["scale_err"] < 0.1 * F:
            log(f"ZOGY: flux scale poorly constrained ({F:.4f} +- {info['scale_err']:.4f}); keeping {F0:.4f}")
            info["scale_fallback"] = True
            F = F0
    if do_shift:
        info["shift_err"] = errs.get("shift", (np.inf, np.inf))
        if not max(info["shift_err"]) < 0.1:
            log(f"ZOGY: shift poorly constrained (+-{max(info['shift_err']):.3f} px); keeping "
                f"({sx0:+.3f}, {sy0:+.3f})")
            info["shift_fallback"] = True
            sx, sy = sx0, sy0
    return F, sx, sy
