"""The kernel fit of one region and direction: normal equations per stamp, the
global spatial solution, stamp rejection and replacement (HOTPANTS's loop)."""

from __future__ import annotations

import numpy as np

from diffgui.engine.alard_lupton.stamps import _build_stamps
from diffgui.engine.errors import check_cancel

def _assemble(M, b, P, nb, nbg):
    """Global normal equations from per-stamp ones.

    Local coefficients of stamp s are (a0, a_n = sum_k c_nk P_sk for n >= 1,
    background terms); the global unknowns are (a0, c_nk, background), in
    HOTPANTS's layout.
    """
    m, nk = P.shape
    nkb = (nb - 1) * nk
    ntot = 1 + nkb + nbg
    G = np.zeros((ntot, ntot))
    h = np.zeros(ntot)
    ks = slice(1, 1 + nkb)
    bs = slice(1 + nkb, ntot)
    PP = (P[:, :, None] * P[:, None, :]).reshape(m, -1)
    Mkk = M[:, 1:nb, 1:nb].reshape(m, -1)
    G[ks, ks] = (Mkk.T @ PP).reshape(nb - 1, nb - 1, nk, nk).transpose(0, 2, 1, 3) \
        .reshape(nkb, nkb)
    G[0, 0] = M[:, 0, 0].sum()
    G[0, ks] = np.einsum("sm,sl->ml", M[:, 0, 1:nb], P).ravel()
    G[bs, bs] = M[:, nb:, nb:].sum(axis=0)
    G[bs, 0] = M[:, nb:, 0].sum(axis=0)
    G[bs, ks] = np.einsum("sbm,sl->bml", M[:, nb:, 1:nb], P).reshape(nbg, nkb)
    G[ks, 0] = G[0, ks]
    G[0, bs] = G[bs, 0]
    G[ks, bs] = G[bs, ks].T
    h[0] = b[:, 0].sum()
    h[ks] = np.einsum("sm,sl->ml", b[:, 1:nb], P).ravel()
    h[bs] = b[:, nb:].sum(axis=0)
    return G, h


def _local_coeffs(theta, P, nb, nk, nbg):
    """Per-stamp local coefficients (m, nb + nbg) from the global ones."""
    m = P.shape[0]
    out = np.empty((m, nb + nbg))
    out[:, 0] = theta[0]
    out[:, 1:nb] = P @ theta[1:1 + (nb - 1) * nk].reshape(nb - 1, nk).T
    out[:, nb:] = theta[1 + (nb - 1) * nk:]
    return out


def _solve_scaled(M, b, ridge=1e-10):
    """Solve M x = b (batched) with Jacobi scaling and a tiny ridge."""
    d = np.sqrt(np.abs(np.diagonal(M, axis1=-2, axis2=-1)))
    d = np.where(d > 0, d, 1.0)
    Ms = M / d[..., :, None] / d[..., None, :]
    eye = np.eye(M.shape[-1]) * ridge
    bs = b / d
    try:
        x = np.linalg.solve(Ms + eye, bs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        x = np.linalg.lstsq(Ms + eye, bs, rcond=None)[0] if M.ndim == 2 else \
            np.array([np.linalg.lstsq(mm + eye, bb, rcond=None)[0] for mm, bb in zip(Ms, bs)])
    return x / d


def _clipped_stats(v, nsig, iters=5):
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 0.0
    keep = np.ones(v.size, bool)
    for _ in range(iters):
        mu, sd = v[keep].mean(), v[keep].std()
        new = np.abs(v - mu) <= nsig * sd if sd > 0 else keep
        if new.sum() < 2 or (new == keep).all():
            break
        keep = new
    return float(v[keep].mean()), float(v[keep].std())


class _DirectionFit:
    """Kernel fit for one convolution direction over one region."""

    def __init__(self, conv, targ, cands, frame, basis, design, opts, log, cancel):
        self.conv, self.targ = conv, targ
        self.cands = cands
        self.frame = frame
        self.basis, self.design = basis, design
        self.ko, self.bgo = int(opts["ko"]), int(opts["bgo"])
        self.ks, self.ssig = float(opts["ks"]), float(opts["ssig"])
        self.log, self.cancel = log, cancel
        self.nb = basis.n
        self.nbg = (self.bgo + 1) * (self.bgo + 2) // 2
        self.cur = [0 if c else -1 for c in cands]
        self.cache = {}
        self.theta = None
        self.weighted = False

    def _keys(self):
        return [(c, i) for c, i in enumerate(self.cur) if i >= 0]

    def _stamps(self, keys):
        missing = [k for k in keys if k not in self.cache]
        if missing:
            xy = [self.cands[c][i] for c, i in missing]
            st = _build_stamps(xy, self.conv, self.targ, self.design, self.frame, self.ko, self.bgo)
            for q, k in enumerate(missing):
                self.cache[k] = {"X": np.ascontiguousarray(np.concatenate([st.A[q], st.Q[q]], axis=1)),
                                 "P": st.P[q], "Y": st.Y[q], "VS": st.VS[q], "VC": st.VC[q],
                                 "VCc": st.VCc[q], "xy": st.xy[q], "W": None}
                if self.theta is not None and self.weighted:
                    self._reweight([k])
        return keys

    def _set_weights(self, k, W):
        s = self.cache[k]
        s["W"] = W
        Xs = s["X"] * np.sqrt(W)[:, None]
        s["M"] = Xs.T @ Xs
        s["b"] = s["X"].T @ (W * s["Y"])
        s["yy"] = float(np.dot(W * s["Y"], s["Y"]))

    def _initial_weights(self, keys, ks_guess=1.0):
        for k in keys:
            s = self.cache[k]
            if s["W"] is None:
                # Before the kernel is known, guess sum(K^2) ~ ksum^2 / 4.
                self._set_weights(k, 1.0 / (s["VS"] + ks_guess ** 2 * s["VCc"] * 0.25))

    def _normal(self, keys):
        M = np.stack([self.cache[k]["M"] for k in keys])
        b = np.stack([self.cache[k]["b"] for k in keys])
        yy = np.array([self.cache[k]["yy"] for k in keys])
        P = np.stack([self.cache[k]["P"] for k in keys])
        return M, b, yy, P

    def _solo_ksums(self, keys):
        M, b, _, _ = self._normal(keys)
        idx = list(range(self.nb)) + [self.nb]
        sol = _solve_scaled(M[:, idx][:, :, idx], b[:, idx])
        return sol[:, 0]

    def _global(self, keys):
        M, b, yy, P = self._normal(keys)
        nk = (self.ko + 1) * (self.ko + 2) // 2
        ko = self.ko
        # Too few stamps for the spatial polynomial: lower the order for this fit.
        while ko > 0 and len(keys) < (ko + 1) * (ko + 2) // 2 + 1:
            ko -= 1
        if ko < self.ko and not getattr(self, "_ko_warned", False):
            self._ko_warned = True
            self.log(f"    only {len(keys)} stamps: kernel spatial order lowered from "
                     f"{self.ko} to {ko} for this region")
        nke = (ko + 1) * (ko + 2) // 2
        Pe = P[:, :nke]
        G, h = _assemble(M, b, Pe, self.nb, self.nbg)
        th = _solve_scaled(G, h, ridge=1e-12)
        nb, nbg = self.nb, self.nbg
        theta = np.zeros(1 + (nb - 1) * nk + nbg)
        theta[0] = th[0]
        theta[1:1 + (nb - 1) * nk].reshape(nb - 1, nk)[:, :nke] = \
            th[1:1 + (nb - 1) * nke].reshape(nb - 1, nke)
        theta[1 + (nb - 1) * nk:] = th[1 + (nb - 1) * nke:]
        alpha = _local_coeffs(theta, P, nb, nk, nbg)
        Ma = np.matmul(M, alpha[:, :, None])[:, :, 0]
        chi2 = yy - 2 * np.einsum("sa,sa->s", alpha, b) + np.einsum("sa,sa->s", alpha, Ma)
        npix = self.cache[keys[0]]["Y"].size
        return theta, chi2 / npix, alpha

    def _reweight(self, keys):
        """Weights from the target variance plus the convolving image's
        variance through the current kernel squared."""
        L, h, n = self.basis.size, self.design.h, self.design.n
        for k in keys:
            s = self.cache[k]
            a = self._local_alpha(s)
            K = np.tensordot(a[:self.nb], self.basis.images, axes=(0, 0))
            F = np.fft.rfft2(s["VC"]) * np.fft.rfft2(K * K, s=(h, h))
            vc = np.fft.irfft2(F, s=(h, h))[L - 1:L - 1 + n, L - 1:L - 1 + n]
            self._set_weights(k, 1.0 / (s["VS"] + np.maximum(vc.ravel(), 0.0)))

    def _local_alpha(self, s):
        nk = (self.ko + 1) * (self.ko + 2) // 2
        return _local_coeffs(self.theta, s["P"][None], self.nb, nk, self.nbg)[0]

    def run(self):
        keys = self._stamps(self._keys())
        if not keys:
            return None
        log = self.log
        self._initial_weights(keys)
        # Stamps whose own constant-kernel fit gives an outlying kernel sum go first.
        if len(keys) >= 5:
            ksums = self._solo_ksums(keys)
            mu, sd = _clipped_stats(ksums, self.ssig)
            out = [k for k, v in zip(keys, ksums) if sd > 0 and abs(v - mu) > self.ks * sd]
            if out and len(out) < len(keys) - 3:
                log(f"    {len(out)} stamps with outlying kernel sums "
                    f"(mean {mu:.4f}, sd {sd:.4f}) replaced")
                self._advance([c for c, _ in out])
                keys = self._stamps(self._keys())
                self._initial_weights(keys, mu)
        self.theta, merit, _ = self._global(keys)
        # Inverse-variance weights with the kernel's own noise, twice.
        for _ in range(2):
            self._reweight(keys)
            self.weighted = True
            self.theta, merit, _ = self._global(keys)
        for it in range(30):
            check_cancel(self.cancel)
            mu, sd = _clipped_stats(merit, self.ssig)
            bad = [k for k, m in zip(keys, merit) if not np.isfinite(m) or m > mu + self.ks * sd]
            if not bad or len(keys) - len(bad) < 3:
                break
            self._advance([c for c, _ in bad])
            keys = self._stamps(self._keys())
            if not keys:
                return None
            self.theta, merit, _ = self._global(keys)
        self._reweight(keys)
        self.theta, merit, alpha = self._global(keys)
        self.keys, self.merit, self.alpha = keys, merit, alpha
        return self

    def _advance(self, cells):
        for c in cells:
            old = (c, self.cur[c])
            self.cache.pop(old, None)
            nxt = self.cur[c] + 1
            self.cur[c] = nxt if nxt < len(self.cands[c]) else -1

    def residual_metric(self, keys=None):
        """Mean residual^2 over the science image variance, in science units:
        comparable between the two directions."""
        keys = keys or self.keys
        num = den = 0.0
        ksum = self.theta[0]
        for k in keys:
            s = self.cache[k]
            a = self._local_alpha(s)
            model = s["X"] @ a
            res = s["Y"] - model
            ok = np.isfinite(s["VS"])            # bad pixels of the stamp weigh nothing
            if self.conv.name == "image":
                res = res / ksum
                vi = s["VCc"]
            else:
                vi = s["VS"]
            num += float(np.sum(res[ok] ** 2))
            den += float(np.sum(vi[ok]))
        return num / den if den > 0 else np.inf

