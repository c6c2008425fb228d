"""Dense linear algebra of the SFFT fit: the penalised, equilibrated Cholesky solve
and :class:`_System`, the normal equations updated pixel by pixel."""

from __future__ import annotations

import numpy as np
from scipy import linalg as _linalg

from diffgui.engine.errors import FitError
from diffgui.engine.sfft.design_rows import DesignRows

#: Smallest reciprocal condition number of the equilibrated system accepted.
RCOND_MIN = 1e-13


# ----------------------------------------------------------------------------------------
# linear algebra
def _symmetric(upper):
    return np.triu(upper) + np.triu(upper, 1).T


def _penalised(H, nkk, nkp, kexp, fpo, flux_penalty, ridge):
    """Add the ridge (kernel terms only) and the flux-sum penalty."""
    diag = np.diag(H)[:nkk]
    h = float(np.median(diag))
    if not (np.isfinite(h) and h > 0):
        raise FitError("the template has no usable structure (its kernel columns are all zero): "
                       "cannot fit a kernel.")
    Hp = H.copy()
    idx = np.arange(nkk)
    Hp[idx, idx] += ridge * h
    if flux_penalty > 0:
        for b, (i, j) in enumerate(kexp):
            if i + j > fpo:
                sel = np.arange(b, nkk, nkp)
                Hp[np.ix_(sel, sel)] += flux_penalty * h
    return Hp


def _single_thread_blas():
    """One OpenBLAS thread for the small dense solves (see :mod:`.blas`)."""
    from diffgui.engine.common.blas import single_thread_blas
    return single_thread_blas()


def _solve_spd(H, g):
    d = np.sqrt(np.diag(H))
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise FitError("the normal equations are singular: some kernel or background term is "
                       "not constrained by any usable pixel.")
    Hs = H / np.outer(d, d)
    try:
        c, low = _linalg.cho_factor(Hs, lower=False, check_finite=False)
    except _linalg.LinAlgError:
        raise FitError("the normal equations are singular (Cholesky failed): reduce the kernel "
                       "or polynomial orders, or add ridge.") from None
    rcond, info = _linalg.lapack.dpocon(c, np.abs(Hs).sum(axis=0).max())
    if info != 0 or not rcond >= RCOND_MIN:
        raise FitError(f"the normal equations are ill-conditioned (rcond {rcond:.2e}): reduce "
                       "the kernel size or polynomial orders, add ridge, or use more pixels.")
    x = _linalg.cho_solve((c, low), g / d, check_finite=False) / d
    return x, float(rcond)



# ----------------------------------------------------------------------------------------
class _System:
    """Normal equations kept as ``w0 (Hb - Hz) + Hd`` so that pixels can be
    removed or reweighted exactly without re-assembling the FFT part.

    ``Hb``: unit-weight FFT sums over the padded plane (None in direct mode);
    ``Hz``: unit sums of the pixels that left the fit (outer ring, edge band,
    masked, clipped); ``Hd``: ``(w - w0) phi phi^T`` summed over the pixels
    with an individual weight (all fitted pixels in direct mode, where w0 = 0).
    Only upper triangles are accumulated.
    """

    def __init__(self, rows: DesignRows, Hb=None, gb=None):
        n = rows.n
        self.rows = rows
        self.Hb, self.gb = Hb, gb
        self.Hz, self.gz = np.zeros((n, n)), np.zeros(n)
        self.Hd, self.gd = np.zeros((n, n)), np.zeros(n)
        self.w0 = 0.0

    def remove_from_base(self, yy, xx):
        if yy.size and self.Hb is not None:
            self.rows.accumulate([(self.Hz, self.gz, 1.0)], yy, xx)

    def set_individual(self, yy, xx, w, w0):
        """Replace the individual part by pixels ``(yy, xx)`` with weights ``w``."""
        self.w0 = w0
        self.Hd[...] = 0.0
        self.gd[...] = 0.0
        if yy.size:
            self.rows.accumulate([(self.Hd, self.gd, w - w0)], yy, xx)

    def clip(self, yy, xx, w, individual):
        """Give pixels weight 0: out of the base sum, and out of the individual part
        where they had an individual weight (one design-matrix pass)."""
        if not yy.size:
            return
        c = np.where(individual, -(w - self.w0), 0.0)
        targets = [(self.Hd, self.gd, c)]
        if self.Hb is not None:
            targets.append((self.Hz, self.gz, np.where(individual, 1.0, 1.0)))
        self.rows.accumulate(targets, yy, xx)

    def matrix(self):
        if self.Hb is None:
            return _symmetric(self.Hd), self.gd.copy()
        H = self.w0 * (np.triu(self.Hb) - self.Hz) + self.Hd
        return _symmetric(H), self.w0 * (self.gb - self.gz) + self.gd

