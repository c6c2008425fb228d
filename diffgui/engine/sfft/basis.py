"""Small building blocks of the SFFT model: polynomial terms, normalised
coordinates, kernel offsets and the shift expansion of polynomials.

The SFFT model (see :mod:`diffgui.engine.sfft`) is

    S(p) = sum_a a_a(p) R(p - d_a) + B(p),
    a_a(p) = sum_b c_ab P_b(x~, y~),   B(p) = sum_g d_g Q_g(x~, y~),

with normalised coordinates ``x~ = (x - (nx-1)/2) / max(1, (nx-1)/2)`` (so
``x~`` spans [-1, 1]) and triangular polynomial bases grouped by total degree,
the x power increasing inside a degree: 1, y, x, y^2, xy, x^2, ...

The FFT assembly relies on one identity: a polynomial evaluated at a shifted
position is a polynomial of the unshifted coordinates,

    P(q + u) = sum_m E[P, m](u) m(q),

whose coefficients :func:`shift_expansion` gives (binomial expansion). It turns
sums like ``sum_p P(p) R(p - d1) R(p - d2)`` into correlations of the fixed
images ``m(q) R(q)``, which FFTs give for all offsets at once.
"""

from __future__ import annotations

from math import comb

import numpy as np

__all__ = [
    "poly_exponents",
    "norm_params",
    "normalise",
    "powers",
    "poly_values",
    "kernel_offsets",
    "shift_expansion",
    "product_table",
]


def poly_exponents(order: int) -> list:
    """Exponents ``(i, j)`` (x power, y power) of the triangular basis of
    total degree <= ``order``, in the order 1, y, x, y^2, xy, x^2, ..."""
    out = []
    for deg in range(int(order) + 1):
        for i in range(deg + 1):
            out.append((i, deg - i))
    return out


def norm_params(n: int) -> tuple:
    """Centre and scale of the normalised coordinate along an axis of ``n`` pixels."""
    c = (int(n) - 1) / 2.0
    return c, max(1.0, c)


def normalise(coord, n: int):
    """Normalised coordinate of 0-based pixel coordinates ``coord`` on an axis of ``n`` pixels."""
    c, s = norm_params(n)
    return (np.asarray(coord, dtype=np.float64) - c) / s


def powers(t, max_deg: int) -> np.ndarray:
    """``t**k`` for k = 0..max_deg, shape ``t.shape + (max_deg + 1,)``."""
    t = np.asarray(t, dtype=np.float64)
    out = np.empty(t.shape + (int(max_deg) + 1,))
    out[..., 0] = 1.0
    for k in range(1, int(max_deg) + 1):
        out[..., k] = out[..., k - 1] * t
    return out


def poly_values(exps, xt, yt) -> np.ndarray:
    """Values of the monomials ``exps`` at normalised coordinates, shape ``(n, len(exps))``."""
    xt = np.atleast_1d(np.asarray(xt, dtype=np.float64))
    yt = np.atleast_1d(np.asarray(yt, dtype=np.float64))
    deg = max((i + j for i, j in exps), default=0)
    px = powers(xt, deg)
    py = powers(yt, deg)
    out = np.empty((xt.size, len(exps)))
    for k, (i, j) in enumerate(exps):
        out[:, k] = px[:, i] * py[:, j]
    return out


def kernel_offsets(kernel_shape) -> tuple:
    """Offsets (dy, dx) of the kernel pixels, row-major with dy outer.

    Returns
    -------
    dy, dx : ndarray of int
        Each of length ky*kx; kernel pixel ``[hy + dy, hx + dx]`` multiplies
        ``R(y - dy, x - dx)`` (a true convolution kernel).
    """
    ky, kx = (int(k) for k in kernel_shape)
    hy, hx = ky // 2, kx // 2
    dy, dx = np.meshgrid(np.arange(-hy, hy + 1), np.arange(-hx, hx + 1), indexing="ij")
    return dy.ravel(), dx.ravel()


def shift_expansion(exps_out, exps_in, ux, uy) -> np.ndarray:
    """Coefficients expressing shifted monomials through unshifted ones.

    For every shift ``(ux[k], uy[k])`` (in normalised units) and every
    monomial ``x^i y^j`` of ``exps_out``::

        (x + ux)^i (y + uy)^j = sum_m E[k, out, m] * x^a_m y^b_m

    where ``m`` runs over ``exps_in``, which must contain every monomial
    ``x^a y^b`` with a <= i and b <= j.

    Returns
    -------
    ndarray, shape ``(len(ux), len(exps_out), len(exps_in))``
    """
    ux = np.atleast_1d(np.asarray(ux, dtype=np.float64))
    uy = np.atleast_1d(np.asarray(uy, dtype=np.float64))
    index = {e: k for k, e in enumerate(exps_in)}
    deg = max((i + j for i, j in exps_out), default=0)
    pux = powers(ux, deg)
    puy = powers(uy, deg)
    out = np.zeros((ux.size, len(exps_out), len(exps_in)))
    for o, (i, j) in enumerate(exps_out):
        for a in range(i + 1):
            for b in range(j + 1):
                m = index.get((a, b))
                if m is None:
                    raise ValueError(f"monomial x^{a} y^{b} missing from the input basis")
                out[:, o, m] += comb(i, a) * comb(j, b) * pux[:, i - a] * puy[:, j - b]
    return out


def product_table(exps_a, exps_b, exps_out) -> np.ndarray:
    """Index into ``exps_out`` of the product of every pair of monomials.

    Returns an int array ``T[len(exps_a), len(exps_b)]`` with
    ``exps_out[T[p, q]] == exps_a[p] + exps_b[q]``.
    """
    index = {e: k for k, e in enumerate(exps_out)}
    t = np.empty((len(exps_a), len(exps_b)), dtype=int)
    for p, (i1, j1) in enumerate(exps_a):
        for q, (i2, j2) in enumerate(exps_b):
            t[p, q] = index[(i1 + i2, j1 + j2)]
    return t
