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
lag at once; the few lags needed are read off the product with a partial
inverse DFT (two small matrix products) instead of a full inverse FFT. The
science side ``sum_p P_b(p) S(p) R(p-d)`` is handled the same way, and the
background blocks need only moments of R.

The image is cut into row strips (memory stays bounded, cost N log(strip)).
Each strip is transformed on its own rows only; the pairs of pixels that
straddle a strip boundary are added from thin bands around the boundaries,
and convolutions are summed strip by strip (overlap-add), so strips cost no
duplicated transforms.

Pixels whose weight differs from the uniform one (the edge band, masked and
clipped pixels, pixels whose inverse variance departs from the median) are
added or removed exactly with :class:`DesignRows` (a dense design matrix for
those pixels only, accumulated with BLAS ``dsyrk``).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as _scipy_fft

from diffgui.engine.common import fft as _fft
from diffgui.engine.errors import check_cancel
from diffgui.engine.sfft.basis import (
    kernel_offsets,
    norm_params,
    normalise,
    poly_exponents,
    powers,
    product_table,
    shift_expansion,
)
from diffgui.engine.sfft.design_rows import DesignRows

__all__ = [
    "STRIP_PIXELS",
    "StripPlan",
    "TemplateSpectra",
    "correlation_tables",
    "base_normal_equations",
    "poly_conv_sum",
    "poly_map",
    "add_poly_map",
    "DesignRows",
]

#: Target number of pixels in one FFT strip (bounds the memory of the FFT work arrays).
STRIP_PIXELS = 1 << 21


def _fft_threads(shape):
    """One FFT thread for small buffers: threading them costs more than it saves."""
    return 1 if shape[0] * shape[1] < (1 << 18) else 0


#: FFT backend of the double-precision transforms: 'scipy' (pocketfft) or 'fftw'
#: (diffgui.engine.common.fft). Single precision always uses scipy.fft.
DOUBLE_BACKEND = "scipy"


def _rfft(buf, nt, single=False):
    if single or DOUBLE_BACKEND == "scipy":
        return _scipy_fft.rfft2(buf, workers=_fft.resolve_threads(nt))
    return _fft.rfft2(buf, nt)


def _irfft(spec, shape, nt, single=False):
    if single or DOUBLE_BACKEND == "scipy":
        return _scipy_fft.irfft2(spec, shape, workers=_fft.resolve_threads(nt))
    return _fft.irfft2(spec, shape, nt)


class StripPlan:
    """Row strips covering an image; every strip goes to a buffer of one
    FFT-friendly shape with ``halo`` zero rows/columns around its rows.

    Parameters
    ----------
    shape : tuple
        Image shape (ny, nx).
    halo_y, halo_x : int
        Zero rows/columns needed on each side (lags or kernel reach).
    max_pixels : int
        Target size of one buffer.
    """

    def __init__(self, shape, halo_y, halo_x, max_pixels=STRIP_PIXELS):
        ny, nx = (int(s) for s in shape)
        self.ny, self.nx = ny, nx
        self.halo_y, self.halo_x = int(halo_y), int(halo_x)
        self.Lx = _fft.next_fast_size(nx + 2 * self.halo_x)
        rows_max = max(64, 4 * self.halo_y, int(max_pixels) // self.Lx)
        n = max(1, -(-ny // rows_max))
        self.rows = -(-ny // n)
        self.Ly = _fft.next_fast_size(self.rows + 2 * self.halo_y)
        self.starts = list(range(0, ny, self.rows))

    @property
    def single(self) -> bool:
        return len(self.starts) == 1

    @property
    def boundaries(self):
        return self.starts[1:]

    def core(self, y0):
        return y0, min(self.ny, y0 + self.rows)

    def fill(self, buf, image, y0, weight=None):
        """Copy the strip's rows of ``image`` (times ``weight`` if given) into ``buf``.

        Image row ``y`` goes to buffer row ``y - y0 + halo_y``; the rest is zero.
        """
        y0, y1 = self.core(y0)
        h = self.halo_y
        buf[:h] = 0.0
        buf[h + (y1 - y0):] = 0.0
        dst = buf[h:h + (y1 - y0)]
        dst[:, self.nx:] = 0.0
        if weight is None:
            dst[:, :self.nx] = image[y0:y1]
        else:
            np.multiply(image[y0:y1], weight(y0, y1), out=dst[:, :self.nx])
        return buf

    def add_back(self, out, conv, y0):
        """Overlap-add a strip's convolution (buffer rows) into ``out``.

        Strips must be added in order into a zeroed ``out``: rows no earlier
        strip reached are assigned, the overlap with the previous strip is added.
        """
        y0, y1 = self.core(y0)
        h = self.halo_y
        a, b = max(0, y0 - h), min(self.ny, y1 + h)
        m = min(b, y0 + h) if y0 > 0 else a
        off = h - y0
        if m > a:
            out[a:m] += conv[a + off:m + off, :self.nx]
        out[m:b] = conv[m + off:b + off, :self.nx]


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


def _kernel_spectrum(kernel, Ly, Lx):
    """Half spectrum (Ly, Lx//2+1) of a centred odd kernel placed at the origin."""
    ky, kx = kernel.shape
    hy, hx = ky // 2, kx // 2
    ey = np.exp(-2j * np.pi * np.outer(np.arange(Ly), np.arange(-hy, hy + 1)) / Ly)
    ex = np.exp(-2j * np.pi * np.outer(np.arange(-hx, hx + 1), np.arange(Lx // 2 + 1)) / Lx)
    return ey @ (kernel @ ex)


def _monomial_weight(px, py, i, j):
    """Row-range function returning the monomial x~^i y~^j on those rows."""
    if not (i or j):
        return None
    return lambda a, b: px[None, :, i] * py[a:b, None, j]


class TemplateSpectra:
    """Spectra of the monomial-weighted template ``A_m = m(q) Rc(q)``, per strip.

    Built while the correlation tables are computed and kept as complex64, so
    that a clipping pass evaluates the model with one inverse FFT per strip:
    ``model(p) = sum_m (L_m * A_m)(p)`` (:meth:`convolve`). Single-precision
    storage adds errors of ~1e-7 of the image RMS, far below any noise.
    """

    def __init__(self, plan, exps):
        self.plan = plan
        self.exps = list(exps)
        self.spectra = []

    def convolve(self, kernels, cancel=None):
        """``sum_m (kernels[m] * A_m)(p)`` on the image grid, zero fill outside."""
        plan = self.plan
        Ly, Lx = plan.Ly, plan.Lx
        ks = [_kernel_spectrum(np.asarray(k, dtype=np.float64), Ly, Lx).astype(np.complex64)
              for k in kernels]
        out = np.zeros((plan.ny, plan.nx))
        nt = _fft_threads((Ly, Lx))
        for y0, spec in zip(plan.starts, self.spectra):
            check_cancel(cancel)
            acc = ks[0] * spec[0]
            for k, a in zip(ks[1:], spec[1:]):
                acc += k * a
            plan.add_back(out, _irfft(acc, (Ly, Lx), nt, True), y0)
        return out


def _cross_terms(Rc, S, exps, px, py, b, hy, hx, Lx, pairs, T, G, ex2, ex1):
    """Add the pairs of pixels straddling the strip boundary at row ``b``.

    Pixels within 2hy rows above (U) and below (D) the boundary go into a
    thin buffer; ``corr(U, D) + corr(D, U)`` are exactly the terms the
    per-strip correlations missed.
    """
    ny, nx = Rc.shape
    w = 2 * hy
    Lb = _fft.next_fast_size(4 * w)
    nt = _fft_threads((Lb, Lx))
    buf = np.zeros((Lb, Lx))
    # image row y -> buffer row y - b + 2w (U at [w, 2w), D at [2w, 3w))
    ua, ub = max(0, b - w), b
    da, db = b, min(ny, b + w)

    def spec(img, a, c, weight):
        buf[...] = 0.0
        blk = img[a:c] if weight is None else img[a:c] * weight(a, c)
        buf[a - b + 2 * w:c - b + 2 * w, :nx] = blk
        return _rfft(buf, nt)

    U = [spec(Rc, ua, ub, _monomial_weight(px, py, i, j)) for (i, j) in exps]
    D = [spec(Rc, da, db, _monomial_weight(px, py, i, j)) for (i, j) in exps]
    SU, SD = spec(S, ua, ub, None), spec(S, da, db, None)
    lag2 = np.arange(-2 * hy, 2 * hy + 1)
    ey2, _ = _idft_matrices(Lb, Lx, lag2, [0])
    ey1, _ = _idft_matrices(Lb, Lx, lag2[hy:3 * hy + 1], [0])
    # _idft_matrices normalises ex by Ly*Lx of the strip buffers: rescale.
    scale_fix = 1.0 / Lb
    for (m1, m2) in pairs:
        prod = U[m1] * D[m2].conj() + D[m1] * U[m2].conj()
        T[m1, m2] += (ey2 @ (prod @ ex2)).real * scale_fix
    for m in range(len(exps)):
        prod = SU * D[m].conj() + SD * U[m].conj()
        G[m] += (ey1 @ (prod @ ex1)).real * scale_fix


def correlation_tables(Rc, S, exps, hy, hx, max_pixels=STRIP_PIXELS, cancel=None, block=64, progress=None):
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
    spectra : TemplateSpectra
        The spectra of ``A_m`` per strip, for fast model evaluation.
    """
    ny, nx = Rc.shape
    nm = len(exps)
    plan = StripPlan(Rc.shape, 2 * hy, 2 * hx, max_pixels)
    Ly, Lx = plan.Ly, plan.Lx
    nt = _fft_threads((Ly, Lx))
    lag2y, lag2x = np.arange(-2 * hy, 2 * hy + 1), np.arange(-2 * hx, 2 * hx + 1)
    ey2, ex2 = _idft_matrices(Ly, Lx, lag2y, lag2x)
    ey1, ex1 = _idft_matrices(Ly, Lx, lag2y[hy:3 * hy + 1], lag2x[hx:3 * hx + 1])
    deg = max(i + j for i, j in exps)
    px = powers(normalise(np.arange(nx), nx), deg)
    py = powers(normalise(np.arange(ny), ny), deg)
    T = np.zeros((nm, nm, 4 * hy + 1, 4 * hx + 1))
    G = np.zeros((nm, 2 * hy + 1, 2 * hx + 1))
    store = TemplateSpectra(plan, exps)
    buf = np.zeros((Ly, Lx))
    pairs = [(m1, m2) for m1 in range(nm) for m2 in range(m1, nm)]

    for n_strip, y0 in enumerate(plan.starts):
        check_cancel(cancel)
        if progress is not None:  # the logger's progress(stage, fraction), see errors.make_logger
            progress("SFFT strips", n_strip / len(plan.starts))
        A = [_rfft(plan.fill(buf, Rc, y0, _monomial_weight(px, py, i, j)), nt)
             for (i, j) in exps]
        Sh = _rfft(plan.fill(buf, S, y0), nt)
        YT = np.zeros((len(pairs), Ly, ex2.shape[1]), dtype=np.complex128)
        YG = np.zeros((nm, Ly, ex1.shape[1]), dtype=np.complex128)
        # Spectrum products and the x part of the partial inverse DFT, by
        # blocks of frequency rows so that the products stay in cache.
        for r0 in range(0, Ly, block):
            r1 = min(Ly, r0 + block)
            conj = [np.conj(a[r0:r1]) for a in A]
            for k, (m1, m2) in enumerate(pairs):
                YT[k, r0:r1] = (A[m1][r0:r1] * conj[m2]) @ ex2
            s = Sh[r0:r1]
            for m in range(nm):
                YG[m, r0:r1] = (s * conj[m]) @ ex1
        for k, (m1, m2) in enumerate(pairs):
            T[m1, m2] += (ey2 @ YT[k]).real
        for m in range(nm):
            G[m] += (ey1 @ YG[m]).real
        store.spectra.append([a.astype(np.complex64) for a in A])
        del A, Sh, YT, YG
    if hy > 0:
        for b in plan.boundaries:
            check_cancel(cancel)
            _cross_terms(Rc, S, exps, px, py, b, hy, hx, Lx, pairs, T, G,
                         ex2 * Ly, ex1 * Ly)
    for m1 in range(nm):
        for m2 in range(m1):
            T[m1, m2] = T[m2, m1][::-1, ::-1]
    return T, G, store


def _moments(image, deg):
    """``M[j, i] = sum_p y~^j x~^i image(p)`` for i, j <= deg."""
    ny, nx = image.shape
    px = powers(normalise(np.arange(nx), nx), deg)
    py = powers(normalise(np.arange(ny), ny), deg)
    return py.T @ (image @ px)


def base_normal_equations(Rc, S, kernel_shape, kernel_poly_order, bg_poly_order,
                          max_pixels=STRIP_PIXELS, cancel=None, progress=None):
    """Unit-weight normal equations over the padded plane (``progress(stage, fraction)``
    is told how many FFT strips are done).

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
    spectra : TemplateSpectra
        For fast model evaluation.
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

    T, G, store = correlation_tables(Rc, S, kexp, hy, hx, max_pixels, cancel, progress=progress)
    if progress is not None:
        progress("SFFT strips", 1.0)
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
    return H, np.concatenate([gk, gb]), store


def poly_conv_sum(X, kernels, exps, out=None, max_pixels=STRIP_PIXELS, cancel=None,
                  single=False):
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
    single : bool
        Single-precision FFTs (relative errors ~1e-7 of the image RMS): for
        noise maps and weights, not for the difference itself.

    Returns
    -------
    ndarray (ny, nx)
    """
    ny, nx = X.shape
    ky, kx = kernels[0].shape
    hy, hx = ky // 2, kx // 2
    # Halos of 2h (h would do) so that the buffers, hence the FFTW plans, are
    # those of the correlation tables.
    plan = StripPlan(X.shape, 2 * hy, 2 * hx, max_pixels)
    Ly, Lx = plan.Ly, plan.Lx
    ctype, rtype = (np.complex64, np.float32) if single else (np.complex128, np.float64)
    spectra = [_kernel_spectrum(np.asarray(k, dtype=np.float64), Ly, Lx).astype(ctype)
               for k in kernels]
    deg = max(i + j for i, j in exps)
    px = powers(normalise(np.arange(nx), nx), deg).astype(rtype)
    py = powers(normalise(np.arange(ny), ny), deg).astype(rtype)
    if out is None:
        out = np.zeros((ny, nx))
    buf = np.zeros((Ly, Lx), dtype=rtype)
    nt = _fft_threads((Ly, Lx))
    h = plan.halo_y
    for y0 in plan.starts:
        check_cancel(cancel)
        y0, y1 = plan.core(y0)
        a, b = max(0, y0 - h), min(ny, y1 + h)
        Xh = _rfft(plan.fill(buf, X, y0), nt, single)
        for K, (i, j) in zip(spectra, exps):
            conv = _irfft(Xh * K, (Ly, Lx), nt, single)[a - y0 + h:b - y0 + h, :nx]
            if i or j:
                conv *= px[None, :, i]
                conv *= py[a:b, None, j]
            out[a:b] += conv
    return out


def add_poly_map(out, coeffs, exps, scale=1.0, block=256):
    """Add ``scale * sum_k coeffs[k] x~^i y~^j`` to ``out`` in place."""
    ny, nx = out.shape
    deg = max((i + j for i, j in exps), default=0)
    C = np.zeros((deg + 1, deg + 1))
    for c, (i, j) in zip(coeffs, exps):
        C[j, i] += c * scale
    py = powers(normalise(np.arange(ny), ny), deg)
    rowpoly = C @ powers(normalise(np.arange(nx), nx), deg).T     # (deg+1, nx)
    for a in range(0, ny, block):
        out[a:a + block] += py[a:a + block] @ rowpoly
    return out


def poly_map(coeffs, exps, shape) -> np.ndarray:
    """Evaluate ``sum_k coeffs[k] * x~^i y~^j`` on the full pixel grid."""
    return add_poly_map(np.zeros(shape), coeffs, exps)
