"""FFT assembly of the SFFT normal equations, and the FFT convolutions the
solver needs (model, propagated variance).

How the normal equations are built (Hu et al. 2022, ApJ 936, 157)
------------------------------------------------------------------
With unit weights over the zero-padded plane, every kernel-kernel entry
``sum_p P_b1(p) R(p-d1) P_b2(p) R(p-d2)`` becomes, after expanding the
polynomials around the shifted positions (:func:`sfft_basis.shift_expansion`),
a combination of correlations

    T[m1, m2](D) = sum_q A_m1(q) A_m2(q - D),   A_m = m(q) R(q),

for the few monomials m of degree <= kernel_poly_order and all lags |D| <= 2h.
One FFT per monomial and one spectrum product per monomial pair give every
lag at once; the few lags we need are read off the spectrum product with a
partial inverse DFT (two small matrix products) instead of a full inverse
FFT. The image is processed in row strips with halos, so memory stays bounded
and the cost grows as N log(strip), i.e. at most N log N. The science side
``sum_p P_b(p) S(p) R(p-d)`` is handled the same way, and the background
blocks need only moments of R.

Pixels whose weight differs from the uniform weight (the edge band, masked,
clipped pixels, pixels whose inverse variance departs from the median) are
added or removed exactly with :class:`DesignRows` (a dense design matrix for
those pixels only, accumulated with BLAS ``dsyrk``).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas as _blas

from . import fft as _fft
from .sfft_basis import (
    kernel_offsets,
    norm_params,
    normalise,
    poly_exponents,
    poly_values,
    powers,
    product_table,
    shift_expansion,
)

__all__ = [
    "StripPlan",
    "correlation_tables",
    "base_normal_equations",
    "poly_conv_sum",
    "DesignRows",
    "poly_map",
]

#: Target number of pixels in one FFT strip (bounds the memory of the FFT work arrays).
STRIP_PIXELS = 1 << 22


class StripPlan:
    """Row strips covering an image, with halos, on one FFT-friendly buffer shape.

    Parameters
    ----------
    shape : tuple
        Image shape (ny, nx).
    halo_y, halo_x : int
        Rows/columns of zero padding (or neighbour data) needed on each side.
    max_pixels : int
        Target size of one buffer.
    """

    def __init__(self, shape, halo_y, halo_x, max_pixels=STRIP_PIXELS):
        ny, nx = (int(s) for s in shape)
        self.ny, self.nx = ny, nx
        self.halo_y, self.halo_x = int(halo_y), int(halo_x)
        self.Lx = _fft.next_fast_size(nx + 2 * self.halo_x)
        rows = max(64, int(max_pixels) // self.Lx)
        if rows + 4 * self.halo_y >= ny or rows >= ny:
            rows = ny
        self.rows = rows
        self.Ly = _fft.next_fast_size(rows + 2 * self.halo_y)
        self.starts = list(range(0, ny, rows))

    @property
    def single(self) -> bool:
        return len(self.starts) == 1

    def core(self, y0):
        return y0, min(self.ny, y0 + self.rows)

    def fill(self, buf, image, y0, extended):
        """Copy rows of ``image`` into ``buf`` (zeroed first).

        Core rows ``[y0, y1)`` go to buffer rows ``[halo_y, halo_y + (y1-y0))``;
        with ``extended`` the halo rows of the neighbours are copied as well.
        """
        buf[...] = 0.0
        y0, y1 = self.core(y0)
        if extended:
            a, b = max(0, y0 - self.halo_y), min(self.ny, y1 + self.halo_y)
        else:
            a, b = y0, y1
        off = self.halo_y - y0
        buf[a + off:b + off, :self.nx] = image[a:b]
        return buf


def _idft_matrices(Ly, Lx, lags_y, lags_x):
    """Matrices of the partial inverse real DFT at integer lags."""
    Lxh = Lx // 2 + 1
    kx = np.arange(Lxh)
    wx = np.full(Lxh, 2.0)
    wx[0] = 1.0
    if Lx % 2 == 0:
        wx[-1] = 1.0
    ex = wx[:, None] * np.exp(2j * np.pi * np.outer(kx, lags_x) / Lx)
    ey = np.exp(2j * np.pi * np.outer(lags_y, np.arange(Ly)) / Ly)
    return ey, ex / (Ly * Lx)


def _partial_idft(spec, ey, ex):
    """Real inverse DFT of a half spectrum at the lags of ``ey``/``ex``."""
    return (ey @ (spec @ ex)).real


def correlation_tables(Rc, S, exps, hy, hx, max_pixels=STRIP_PIXELS, cancel=None):
    """Correlation tables of the monomial-weighted template with itself and the science.

    Parameters
    ----------
    Rc : ndarray
        Template (already centred, zero at unusable pixels).
    S : ndarray
        Science image (zero at unusable pixels).
    exps : list
        Monomials (x power, y power) of degree <= kernel_poly_order.
    hy, hx : int
        Kernel half sizes.

    Returns
    -------
    T : ndarray, shape (nm, nm, 4hy+1, 4hx+1)
        ``T[m1, m2, Dy+2hy, Dx+2hx] = sum_q A_m1(q) A_m2(q - D)``.
    G : ndarray, shape (nm, 2hy+1, 2hx+1)
        ``G[m, dy+hy, dx+hx] = sum_p S(p) A_m(p - d)``.
    """
    from .errors import check_cancel

    ny, nx = Rc.shape
    nm = len(exps)
    plan = StripPlan(Rc.shape, 2 * hy, 2 * hx, max_pixels)
    Ly, Lx = plan.Ly, plan.Lx
    lag2y, lag2x = np.arange(-2 * hy, 2 * hy + 1), np.arange(-2 * hx, 2 * hx + 1)
    ey2, ex2 = _idft_matrices(Ly, Lx, lag2y, lag2x)
    ey1, ex1 = _idft_matrices(Ly, Lx, lag2y[hy:3 * hy + 1], lag2x[hx:3 * hx + 1])
    xt = normalise(np.arange(nx), nx)
    yt = normalise(np.arange(ny), ny)
    deg = max(i + j for i, j in exps)
    px = powers(xt, deg)
    py = powers(yt, deg)
    T = np.zeros((nm, nm, 4 * hy + 1, 4 * hx + 1))
    G = np.zeros((nm, 2 * hy + 1, 2 * hx + 1))
    buf = np.zeros((Ly, Lx))
    for y0 in plan.starts:
        check_cancel(cancel)
        ext = []
        for (i, j) in exps:
            A = Rc * px[None, :, i] * py[:, None, j] if (i or j) else Rc
            ext.append(_fft.rfft2(plan.fill(buf, A, y0, True)))
        if plan.single:
            res = ext
        else:
            res = None
        Sh = _fft.rfft2(plan.fill(buf, S, y0, False))
        for m1, (i, j) in enumerate(exps):
            if res is None:
                A = Rc * px[None, :, i] * py[:, None, j] if (i or j) else Rc
                a1 = _fft.rfft2(plan.fill(buf, A, y0, False))
            else:
                a1 = res[m1]
            for m2 in range(m1, nm):
                T[m1, m2] += _partial_idft(a1 * ext[m2].conj(), ey2, ex2)
            del a1
        for m in range(nm):
            G[m] += _partial_idft(Sh * ext[m].conj(), ey1, ex1)
        del ext, res, Sh
    for m1 in range(nm):
        for m2 in range(m1):
            T[m1, m2] = T[m2, m1][::-1, ::-1]
    return T, G


def _moments(image, deg):
    """``M[j, i] = sum_p y~^j x~^i image(p)`` for i, j <= deg."""
    ny, nx = image.shape
    px = powers(normalise(np.arange(nx), nx), deg)
    py = powers(normalise(np.arange(ny), ny), deg)
    return py.T @ (image @ px)


def base_normal_equations(Rc, S, kernel_shape, kernel_poly_order, bg_poly_order,
                          max_pixels=STRIP_PIXELS, cancel=None):
    """Unit-weight normal equations over the padded plane.

    The sums run over every pixel ``p`` of the image grown by the kernel
    half-size on each side (``Omega+``), with ``Rc`` and ``S`` zero outside
    the image. Callers remove the pixels they do not want (the edge band,
    the outer ring, masked pixels) with :class:`DesignRows`.

    Returns
    -------
    H : ndarray (n, n)
        Symmetric matrix ``sum_p phi phi^T``.
    g : ndarray (n,)
        ``sum_p phi S``.
    """
    ky, kx = kernel_shape
    hy, hx = ky // 2, kx // 2
    ny, nx = Rc.shape
    kexp = poly_exponents(kernel_poly_order)
    bexp = poly_exponents(bg_poly_order)
    nk, nkp, nbg = ky * kx, len(kexp), len(bexp)
    dy, dx = kernel_offsets(kernel_shape)
    _, sx = norm_params(nx)
    _, sy = norm_params(ny)
    ux, uy = dx / sx, dy / sy

    T, G = correlation_tables(Rc, S, kexp, hy, hx, max_pixels, cancel)
    E = shift_expansion(kexp, kexp, ux, uy)                       # (nk, nkp, nm)
    ly = dy[None, :] - dy[:, None] + 2 * hy                        # lag of (a1, a2)
    lx = dx[None, :] - dx[:, None] + 2 * hx
    Tm = T[:, :, ly, lx]                                           # (nm, nm, nk, nk)
    Hkk = np.einsum("aim,mnab,bjn->aibj", E, Tm, E, optimize=True).reshape(nk * nkp, nk * nkp)
    Gd = G[:, dy + hy, dx + hx]                                    # (nm, nk)
    gk = np.einsum("aim,ma->ai", E, Gd).reshape(-1)

    # Background-kernel block: sum_q (Q_g P_b)(q + d) Rc(q), from moments of Rc.
    pdeg = bg_poly_order + kernel_poly_order
    pexp = poly_exponents(pdeg)
    mom = _moments(Rc, pdeg)
    mu = np.array([mom[j, i] for i, j in pexp])
    E2 = shift_expansion(pexp, pexp, ux, uy)                       # (nk, np, np)
    F = E2 @ mu                                                    # (nk, np)
    PT = product_table(bexp, kexp, pexp)                           # (nbg, nkp)
    Hbk = F[:, PT].transpose(1, 0, 2).reshape(nbg, nk * nkp)

    # Background-background block over Omega+ (separable sums).
    bdeg = 2 * bg_poly_order
    sx_ = powers(normalise(np.arange(-hx, nx + hx), nx), bdeg).sum(axis=0)
    sy_ = powers(normalise(np.arange(-hy, ny + hy), ny), bdeg).sum(axis=0)
    Hbb = np.empty((nbg, nbg))
    for a, (i1, j1) in enumerate(bexp):
        for b, (i2, j2) in enumerate(bexp):
            Hbb[a, b] = sx_[i1 + i2] * sy_[j1 + j2]
    smom = _moments(S, bg_poly_order)
    gb = np.array([smom[j, i] for i, j in bexp])

    n = nk * nkp + nbg
    H = np.empty((n, n))
    H[:nk * nkp, :nk * nkp] = 0.5 * (Hkk + Hkk.T)
    H[nk * nkp:, :nk * nkp] = Hbk
    H[:nk * nkp, nk * nkp:] = Hbk.T
    H[nk * nkp:, nk * nkp:] = Hbb
    return H, np.concatenate([gk, gb])


def _kernel_spectrum(kernel, Ly, Lx):
    """Half spectrum (Ly, Lx//2+1) of a centred odd kernel placed at the origin."""
    ky, kx = kernel.shape
    hy, hx = ky // 2, kx // 2
    ey = np.exp(-2j * np.pi * np.outer(np.arange(Ly), np.arange(-hy, hy + 1)) / Ly)
    ex = np.exp(-2j * np.pi * np.outer(np.arange(-hx, hx + 1), np.arange(Lx // 2 + 1)) / Lx)
    return ey @ (kernel @ ex)


def poly_conv_sum(X, kernels, exps, out=None, max_pixels=STRIP_PIXELS, cancel=None):
    """``sum_j m_j(p) (k_j * X)(p)`` with zero fill outside the image.

    Parameters
    ----------
    X : ndarray (ny, nx)
        Image to convolve.
    kernels : sequence of ndarray
        Centred odd kernels, all of the same shape.
    exps : list of (i, j)
        Monomial multiplying each convolution (normalised coordinates).
    out : ndarray, optional
        Array to add the result to (a new zero array by default).

    Returns
    -------
    ndarray (ny, nx)
    """
    from .errors import check_cancel

    ny, nx = X.shape
    ky, kx = kernels[0].shape
    hy, hx = ky // 2, kx // 2
    plan = StripPlan(X.shape, hy, hx, max_pixels)
    Ly, Lx = plan.Ly, plan.Lx
    spectra = [_kernel_spectrum(np.asarray(k, dtype=np.float64), Ly, Lx) for k in kernels]
    deg = max(i + j for i, j in exps)
    px = powers(normalise(np.arange(nx), nx), deg)
    py = powers(normalise(np.arange(ny), ny), deg)
    if out is None:
        out = np.zeros((ny, nx))
    buf = np.zeros((Ly, Lx))
    for y0 in plan.starts:
        check_cancel(cancel)
        y0, y1 = plan.core(y0)
        Xh = _fft.rfft2(plan.fill(buf, X, y0, True))
        dst = out[y0:y1]
        for K, (i, j) in zip(spectra, exps):
            conv = _fft.irfft2(Xh * K, (Ly, Lx))[hy:hy + (y1 - y0), :nx]
            if i or j:
                conv *= px[None, :, i]
                conv *= py[y0:y1, None, j]
            dst += conv
    return out


def poly_map(coeffs, exps, shape) -> np.ndarray:
    """Evaluate ``sum_k coeffs[k] * x~^i y~^j`` on the full pixel grid."""
    ny, nx = shape
    deg = max((i + j for i, j in exps), default=0)
    C = np.zeros((deg + 1, deg + 1))
    for c, (i, j) in zip(coeffs, exps):
        C[j, i] += c
    py = powers(normalise(np.arange(ny), ny), deg)
    px = powers(normalise(np.arange(nx), nx), deg)
    return py @ C @ px.T


class DesignRows:
    """Rows of the design matrix for arbitrary pixels, and their exact
    addition to (or removal from) the normal equations.

    ``phi(p) = [Rc(p - d_a) P_b(p) for a, b] + [Q_g(p)]`` in the solver's
    layout (kernel index major, polynomial term minor, then background).
    Pixels may lie up to ``2h`` outside the image (they read zeros there).
    """

    def __init__(self, Rc, S, kernel_shape, kernel_poly_order, bg_poly_order):
        ky, kx = kernel_shape
        self.hy, self.hx = ky // 2, kx // 2
        self.ny, self.nx = Rc.shape
        self.py, self.px = 2 * self.hy, 2 * self.hx
        W = self.nx + 2 * self.px
        self.W = W
        self.Rpad = np.zeros((self.ny + 2 * self.py, W))
        self.Rpad[self.py:self.py + self.ny, self.px:self.px + self.nx] = Rc
        self.Spad = np.zeros_like(self.Rpad)
        self.Spad[self.py:self.py + self.ny, self.px:self.px + self.nx] = S
        dy, dx = kernel_offsets(kernel_shape)
        self.offs = dy * W + dx
        self.kexp = poly_exponents(kernel_poly_order)
        self.bexp = poly_exponents(bg_poly_order)
        self.nk = ky * kx
        self.nkp = len(self.kexp)
        self.nbg = len(self.bexp)
        self.n = self.nk * self.nkp + self.nbg

    def rows(self, yy, xx):
        """Design rows and science values of pixels ``(yy, xx)``."""
        yy = np.asarray(yy, dtype=np.int64)
        xx = np.asarray(xx, dtype=np.int64)
        flat = (yy + self.py) * self.W + (xx + self.px)
        vals = self.Rpad.ravel()[flat[:, None] - self.offs[None, :]]
        xt = normalise(xx, self.nx)
        yt = normalise(yy, self.ny)
        P = poly_values(self.kexp, xt, yt)
        Q = poly_values(self.bexp, xt, yt)
        n = yy.size
        phi = np.empty((n, self.n))
        k = self.nk * self.nkp
        np.multiply(vals[:, :, None], P[:, None, :], out=phi[:, :k].reshape(n, self.nk, self.nkp))
        phi[:, k:] = Q
        return phi, self.Spad.ravel()[flat]

    def accumulate(self, H, g, yy, xx, coef, chunk=8192):
        """Add ``sum coef phi phi^T`` to the upper triangle of ``H`` and ``sum coef phi S`` to ``g``.

        ``coef`` is a scalar or one value per pixel, of either sign.
        """
        yy = np.asarray(yy).ravel()
        xx = np.asarray(xx).ravel()
        coef = np.broadcast_to(np.asarray(coef, dtype=np.float64), yy.shape)
        for s in range(0, yy.size, chunk):
            c = coef[s:s + chunk]
            phi, sv = self.rows(yy[s:s + chunk], xx[s:s + chunk])
            g += phi.T @ (c * sv)
            for sign in (1.0, -1.0):
                sel = c * sign > 0
                if not sel.any():
                    continue
                a = phi[sel] if not sel.all() else phi
                a = a * np.sqrt(np.abs(c[sel]))[:, None]
                H += _blas.dsyrk(sign, a.T, trans=0, lower=0)

    def predict(self, yy, xx, coeffs, chunk=65536):
        """Model values ``phi(p) . coeffs`` at pixels ``(yy, xx)``."""
        yy = np.asarray(yy).ravel()
        xx = np.asarray(xx).ravel()
        out = np.empty(yy.size)
        for s in range(0, yy.size, chunk):
            phi, _ = self.rows(yy[s:s + chunk], xx[s:s + chunk])
            out[s:s + chunk] = phi @ coeffs
        return out
