"""Images with their noise (:class:`_Side`), stamp candidates on the stamp grid, and
per-stamp design matrices (basis images convolved with the stamp windows)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffgui.engine.alard_lupton.basis import Basis
from diffgui.engine.alard_lupton.regions import KernelRegion, _poly_values

# ---- images and their noise --------------------------------------------------------------

class _Side:
    """One input image: data, bad pixels and a variance model."""

    def __init__(self, name, data, mask, sigma, gain, rdnoise, lower, upper, upper_stamp,
                 pedestal=0.0):
        self.name = name
        self.data = data if not pedestal else data - pedestal
        self.sigma = sigma
        self.gain = float(gain) if gain else 1.0
        self.rdnoise = float(rdnoise or 0.0)
        self.lower, self.upper, self.upper_stamp = lower - pedestal, upper - pedestal, \
            upper_stamp - pedestal
        nonfinite = ~np.isfinite(self.data)
        self.all_finite = not nonfinite.any()
        with np.errstate(invalid="ignore"):
            bad = nonfinite | (self.data >= self.upper) | (self.data <= self.lower)
        if mask is not None:
            bad |= mask
        self.masked = mask if mask is not None and mask.any() else None
        if sigma is not None:
            bad |= ~(np.isfinite(sigma) & (sigma > 0))
        self.bad = bad
        finite = self.data[::7, ::7]
        finite = finite[np.isfinite(finite)]
        self.fill = float(np.median(finite)) if finite.size else 0.0

    def values(self, sl):
        v = self.data[sl]
        if not self.all_finite and not np.isfinite(v).all():
            v = np.where(np.isfinite(v), v, self.fill)
        return v

    def var(self, sl, smooth=False, values=None):
        """Variance of the pixels in ``sl`` (ADU^2); ``values`` may pass
        ``self.values(sl)`` when the caller already has them."""
        if self.sigma is not None:
            s = self.sigma[sl]
            v = np.where(np.isfinite(s) & (s > 0), s * s, np.inf)
            return v
        d = self.values(sl) if values is None else values
        if smooth and min(d.shape[-2:]) >= 3:
            from scipy import ndimage

            d = ndimage.uniform_filter(d, 3, mode="nearest")
        return np.abs(d) / self.gain + (self.rdnoise / self.gain) ** 2


# ---- stamps -------------------------------------------------------------------------------

#: A stamp may hold isolated bad pixels (they get zero weight in the fit), but
#: none in its core (radius max(2, rss // 4) around the centre) and at most this
#: share of its (rss + r) box, in either image.
MAX_BAD_FRACTION = 0.05
#: Target pixels this close to a bad pixel of the convolved image get zero weight.
BAD_CONV_RADIUS = 2

def _cells(frame, nsx, nsy):
    fx0, fx1, fy0, fy1 = frame
    w, h = fx1 - fx0 + 1, fy1 - fy0 + 1
    out = []
    for l in range(nsy):
        for k in range(nsx):
            out.append((fx0 + k * w // nsx, fx0 + (k + 1) * w // nsx - 1,
                        fy0 + l * h // nsy, fy0 + (l + 1) * h // nsy - 1))
    return out


def _sky_sigma(side: _Side, sl):
    d = side.data[sl][::2, ::2]
    b = side.bad[sl][::2, ::2]
    v = d[~b]
    if v.size < 10:
        return None
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    if not mad > 0:
        mad = float(np.std(v)) or 1.0
    return med, mad


def _find_candidates(sides, region, opts, ft, stamp_xy=None, log=None, detect=None):
    """Candidate substamp centres per stamp cell, best first.

    A candidate is a local maximum of the S/N in the ``detect`` images
    (the larger of their S/N when there are two; bad pixels are never peaks)
    above ``ft`` whose (rss+r) box has no saturated pixel and few bad or
    non-finite ones in both images (``sides``): none in the core, at most
    :data:`MAX_BAD_FRACTION` of the box.
    """
    detect = sides if detect is None else detect
    good, frame = region
    r, rss, nss = int(opts["r"]), int(opts["rss"]), int(opts["nss"])
    ny, nx = sides[0].data.shape
    half = rss + r
    lo_x, hi_x = max(frame[0], half), min(frame[1], nx - 1 - half)
    lo_y, hi_y = max(frame[2], half), min(frame[3], ny - 1 - half)
    cells = _cells(frame, int(opts["nsx"]), int(opts["nsy"]))
    core = max(2, rss // 4)
    csl = slice(half - core, half + core + 1)

    def box_ok(x, y):
        sl = (slice(y - half, y + half + 1), slice(x - half, x + half + 1))
        for s in sides:
            b = s.bad[sl]
            if b.any() and (b[csl, csl].any() or b.mean() > MAX_BAD_FRACTION):
                return False
            with np.errstate(invalid="ignore"):
                if ((s.data[sl] >= s.upper_stamp) & ~b).any():   # masked pixels may hold anything
                    return False
        return True

    result = []
    for (cx0, cx1, cy0, cy1) in cells:
        ax0, ax1 = max(cx0, lo_x), min(cx1, hi_x)
        ay0, ay1 = max(cy0, lo_y), min(cy1, hi_y)
        chosen = []
        if ax1 < ax0 or ay1 < ay0:
            result.append(chosen)
            continue
        if stamp_xy is not None and len(stamp_xy):
            xs = np.round(stamp_xy[:, 0]).astype(int)
            ys = np.round(stamp_xy[:, 1]).astype(int)
            sel = np.nonzero((xs >= ax0) & (xs <= ax1) & (ys >= ay0) & (ys <= ay1))[0]
            for idx in sel:
                x, y = int(xs[idx]), int(ys[idx])
                if box_ok(x, y) and all(abs(x - a) > 2 or abs(y - b) > 2 for a, b in chosen):
                    chosen.append((x, y))
                if len(chosen) >= nss:
                    break
            if not int(opts.get("afssc", 1)):
                result.append(chosen)
                continue
        if len(chosen) < nss:
            sl = (slice(cy0, cy1 + 1), slice(cx0, cx1 + 1))
            snr = None
            for s in detect:
                st = _sky_sigma(s, sl)
                if st is None:
                    continue
                sub = s.data[ay0 - 1:ay1 + 2, ax0 - 1:ax1 + 2]
                z = np.where(s.bad[ay0 - 1:ay1 + 2, ax0 - 1:ax1 + 2], -np.inf, (sub - st[0]) / st[1])
                snr = z if snr is None else np.maximum(snr, z)
            if snr is not None:
                snr = np.where(np.isfinite(snr), snr, -np.inf)
                c = snr[1:-1, 1:-1]
                peak = c > ft
                if peak.any():
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            if dy or dx:
                                peak &= c >= snr[1 + dy:snr.shape[0] - 1 + dy,
                                                 1 + dx:snr.shape[1] - 1 + dx]
                    py, px = np.nonzero(peak)
                    order = np.argsort(-c[py, px], kind="stable")
                    for o in order:
                        x, y = int(px[o] + ax0), int(py[o] + ay0)
                        if all(abs(x - a) > 2 or abs(y - b) > 2 for a, b in chosen) and box_ok(x, y):
                            chosen.append((x, y))
                            if len(chosen) >= nss:
                                break
        result.append(chosen)
    return result


# ---- per-stamp design matrices -------------------------------------------------------------

def _toeplitz(f, nin, nout):
    """Matrix T (nin, nout) with (w @ T)[c] = sum_u f[u + r] w[c + r - u] (true convolution)."""
    r = (len(f) - 1) // 2
    T = np.zeros((nin, nout))
    c = np.arange(nout)
    for u in range(-r, r + 1):
        T[c + r - u, c] = f[u + r]
    return T


class _StampDesign:
    """Convolutions of the basis with the convolving image on a set of substamps."""

    def __init__(self, basis: Basis, rss: int):
        self.basis = basis
        self.rss = rss
        r = basis.r
        self.h = 2 * (rss + r) + 1
        self.n = 2 * rss + 1
        # x filters per (gaussian, x power), y filters per (gaussian, y power)
        self.xf_index, self.yf_index = {}, {}
        xs, ys = [], []
        ax = np.arange(-r, r + 1, dtype=np.float64)
        for g, (deg, sig) in enumerate(basis.gaussians):
            gau = basis.gauss_1d[g]
            for p in range(deg + 1):
                self.xf_index[(g, p)] = len(xs)
                xs.append(_toeplitz(ax ** p * gau, self.h, self.n))
                self.yf_index[(g, p)] = len(ys)
                ys.append(_toeplitz(ax ** p * gau, self.h, self.n).T)
        self.TX = np.concatenate(xs, axis=1)          # (h, nfx*n)
        self.TY = np.stack(ys)                         # (nfy, n, h)
        self.nfx = len(xs)

    def convolve(self, windows):
        """windows (m, h, h) -> basis convolutions (m, n*n, nbasis)."""
        m = windows.shape[0]
        n, h = self.n, self.h
        R = (windows.reshape(m * h, h) @ self.TX).reshape(m, h, self.nfx, n)
        out = np.empty((m, n, n, self.basis.n))
        for b, (g, i, j) in enumerate(self.basis.terms):
            Ri = R[:, :, self.xf_index[(g, i)], :]              # (m, h, n)
            out[..., b] = np.matmul(self.TY[self.yf_index[(g, j)]], Ri) * self.basis.scale[b]
        sub = np.nonzero(self.basis.sub0)[0]
        if sub.size:
            out[..., sub] -= out[..., :1]
        return out.reshape(m, n * n, self.basis.n)


@dataclass
class _Stamps:
    xy: np.ndarray          # (m, 2) centres
    A: np.ndarray           # (m, npix, nbasis)
    Q: np.ndarray           # (m, npix, nbg)
    P: np.ndarray           # (m, nk)
    Y: np.ndarray           # (m, npix) target pixels
    VS: np.ndarray          # (m, npix) target variance (smoothed model)
    VC: np.ndarray          # (m, h, h) convolving-image variance windows
    VCc: np.ndarray         # (m, npix) convolving-image variance on the substamp


def _fill_bad(win, bad):
    """``win`` with its bad pixels replaced by the median of the good ones within 2 px."""
    out = win.copy()
    ok = ~bad
    for y, x in zip(*np.nonzero(bad)):
        nb = win[max(0, y - 2):y + 3, max(0, x - 2):x + 3][ok[max(0, y - 2):y + 3, max(0, x - 2):x + 3]]
        out[y, x] = np.median(nb) if nb.size else np.median(win[ok])
    return out


def _stamp_windows(x, y, conv: _Side, targ: _Side, rss, r):
    """Convolving-image window, target pixels, target and window variances of one
    stamp; bad pixels filled (window) or given infinite variance (target, and the
    target pixels near a bad window pixel), so that they weigh nothing."""
    from scipy import ndimage

    half = rss + r
    wsl = (slice(y - half, y + half + 1), slice(x - half, x + half + 1))
    ssl = (slice(y - rss, y + rss + 1), slice(x - rss, x + rss + 1))
    win, wbad = conv.values(wsl), conv.bad[wsl]
    vs = targ.var(ssl, smooth=True)
    vc = conv.var(wsl, smooth=True)
    if wbad.any():
        win = _fill_bad(win, wbad)
        near = ndimage.binary_dilation(wbad, iterations=BAD_CONV_RADIUS)[r:r + 2 * rss + 1,
                                                                         r:r + 2 * rss + 1]
        vs = np.where(near, np.inf, vs)
    finite = np.isfinite(vc)
    if not finite.all():
        vc = np.where(finite, vc, np.median(vc[finite]) if finite.any() else 1.0)
    vs = np.where(targ.bad[ssl], np.inf, vs)
    return win, targ.values(ssl).ravel(), vs.ravel(), vc


def _build_stamps(xy, conv: _Side, targ: _Side, design: _StampDesign, frame, ko, bgo):
    rss, r = design.rss, design.basis.r
    wins, ys, vs, vcs = [], [], [], []
    for x, y in xy:
        w, t, v, c = _stamp_windows(x, y, conv, targ, rss, r)
        wins.append(w)
        ys.append(t)
        vs.append(v)
        vcs.append(c)
    wins = np.array(wins)
    A = design.convolve(wins)
    xy = np.asarray(xy, dtype=float)
    reg = KernelRegion(None, frame, np.zeros(1))
    xn, yn = reg.norm_xy(xy[:, 0], xy[:, 1])
    P = _poly_values(xn, yn, ko).T                                   # (m, nk)
    off = np.arange(-rss, rss + 1)
    px = xy[:, 0][:, None, None] + off[None, None, :]
    py = xy[:, 1][:, None, None] + off[None, :, None]
    pxn, pyn = reg.norm_xy(np.broadcast_to(px, (len(xy), len(off), len(off))),
                           np.broadcast_to(py, (len(xy), len(off), len(off))))
    Q = _poly_values(pxn, pyn, bgo)                                  # (nbg, m, n, n)
    Q = np.moveaxis(Q, 0, -1).reshape(len(xy), -1, Q.shape[0])
    VC = np.array(vcs)
    VCc = VC[:, r:r + design.n, r:r + design.n].reshape(len(xy), -1)
    return _Stamps(xy, A, Q, P, np.array(ys), np.array(vs), VC, VCc)

