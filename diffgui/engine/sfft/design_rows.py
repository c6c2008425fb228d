"""Design rows of the SFFT model for arbitrary pixels (:class:`DesignRows`).

The FFT assembly (:mod:`.assembly`) builds the normal equations with uniform weights;
the pixels whose weight differs (the edge band, masked and clipped pixels, pixels whose
inverse variance departs from the median) are added or removed exactly here, with a dense
design matrix for those pixels only, accumulated with BLAS ``dsyrk``.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas as _blas

from diffgui.engine.sfft.basis import kernel_offsets, normalise, poly_exponents, poly_values

__all__ = ["DesignRows"]


class DesignRows:
    """Rows of the design matrix for arbitrary pixels, and their exact
    addition to (or removal from) the normal equations.

    ``phi(p) = [Rc(p - d_a) P_b(p) for a, b] + [Q_g(p)]`` in the solver's
    layout (kernel index major, polynomial term minor, then background).
    ``Rpad``/``Spad`` hold the template and science images with ``2h`` rows
    and columns of zeros around them (see :meth:`padded`); pixels may lie up
    to ``2h`` outside the image (they read zeros there).
    """

    def __init__(self, Rpad, Spad, kernel_shape, kernel_poly_order, bg_poly_order):
        ky, kx = kernel_shape
        self.hy, self.hx = ky // 2, kx // 2
        self.py, self.px = 2 * self.hy, 2 * self.hx
        self.ny, self.nx = Rpad.shape[0] - 2 * self.py, Rpad.shape[1] - 2 * self.px
        self.W = W = Rpad.shape[1]
        self.Rpad, self.Spad = Rpad, Spad
        dy, dx = kernel_offsets(kernel_shape)
        self.offs = dy * W + dx
        self.kexp = poly_exponents(kernel_poly_order)
        self.bexp = poly_exponents(bg_poly_order)
        self.nk = ky * kx
        self.nkp = len(self.kexp)
        self.nbg = len(self.bexp)
        self.n = self.nk * self.nkp + self.nbg

    @staticmethod
    def padded(shape, kernel_shape):
        """A zero array with the padding :class:`DesignRows` expects, and the view of its image part."""
        ky, kx = kernel_shape
        py, px = 2 * (ky // 2), 2 * (kx // 2)
        ny, nx = shape
        a = np.zeros((ny + 2 * py, nx + 2 * px))
        return a, a[py:py + ny, px:px + nx]

    def rows(self, yy, xx, R=None):
        """Design rows and science values of pixels ``(yy, xx)``.

        ``R`` optionally replaces the padded template (same layout).
        """
        yy = np.asarray(yy, dtype=np.int64)
        xx = np.asarray(xx, dtype=np.int64)
        flat = (yy + self.py) * self.W + (xx + self.px)
        Rp = self.Rpad if R is None else R
        vals = Rp.ravel()[flat[:, None] - self.offs[None, :]]
        xt = normalise(xx, self.nx)
        yt = normalise(yy, self.ny)
        P = poly_values(self.kexp, xt, yt)
        Q = poly_values(self.bexp, xt, yt)
        n = yy.size
        phi = np.empty((n, self.n))
        k = self.nk * self.nkp
        np.multiply(vals[:, :, None], P[:, None, :], out=phi[:, :k].reshape(n, self.nk, self.nkp))
        phi[:, k:] = Q
        return phi, (self.Spad.ravel()[flat] if R is None else None)

    def accumulate(self, targets, yy, xx, chunk=8192):
        """Add ``sum coef phi phi^T`` to upper triangles and ``sum coef phi S`` to vectors.

        Parameters
        ----------
        targets : list of (H, g, coef)
            Each ``coef`` a scalar or one value per pixel, of either sign; the
            design rows are built once for all targets.
        yy, xx : ndarray of int
            Pixels.
        """
        yy = np.asarray(yy).ravel()
        xx = np.asarray(xx).ravel()
        coefs = [np.broadcast_to(np.asarray(c, dtype=np.float64), yy.shape) for _, _, c in targets]
        for s in range(0, yy.size, chunk):
            phi, sv = self.rows(yy[s:s + chunk], xx[s:s + chunk])
            for (H, g, _), coef in zip(targets, coefs):
                c = coef[s:s + chunk]
                g += phi.T @ (c * sv)
                for sign in (1.0, -1.0):
                    sel = c * sign > 0
                    if not sel.any():
                        continue
                    a = phi[sel] if not sel.all() else phi
                    a = a * np.sqrt(np.abs(c[sel]))[:, None]
                    H += _blas.dsyrk(sign, a.T, trans=0, lower=0)

    def predict(self, yy, xx, coeffs, R=None, chunk=65536):
        """Model values ``phi(p) . coeffs`` at pixels ``(yy, xx)`` (``R``: another padded template)."""
        yy = np.asarray(yy).ravel()
        xx = np.asarray(xx).ravel()
        out = np.empty(yy.size)
        for s in range(0, yy.size, chunk):
            phi, _ = self.rows(yy[s:s + chunk], xx[s:s + chunk], R)
            out[s:s + chunk] = phi @ coeffs
        return out
