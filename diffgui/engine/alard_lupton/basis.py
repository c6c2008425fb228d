"""The kernel basis: Gaussians times polynomials (HOTPANTS ``ng``)."""

from __future__ import annotations

import math

import numpy as np

from diffgui.engine.errors import InputError


def parse_ng(ng):
    """Normalise an ``ng`` basis description to a tuple of ``(degree, sigma)``.

    Accepts HOTPANTS's flat form ``(N, d1, s1, ..., dN, sN)`` (sequence or
    text) or a sequence of ``(degree, sigma)`` pairs.
    """
    if isinstance(ng, str):
        ng = ng.split()
    vals = list(ng)
    if not vals:
        raise InputError("ng is empty: give N d1 s1 ... dN sN.")
    if isinstance(vals[0], (tuple, list, np.ndarray)):
        pairs = [(v[0], v[1]) for v in vals]
    else:
        n = float(vals[0])
        if not n.is_integer() or n < 1 or len(vals) != 1 + 2 * int(n):
            raise InputError(f"ng must be N d1 s1 ... dN sN with N >= 1, got {tuple(ng)}")
        pairs = [(vals[1 + 2 * k], vals[2 + 2 * k]) for k in range(int(n))]
    out = []
    for d, s in pairs:
        d, s = float(d), float(s)
        if not d.is_integer() or d < 0 or not (s > 0 and math.isfinite(s)):
            raise InputError(f"ng: degree must be an integer >= 0 and sigma > 0, got ({d}, {s})")
        out.append((int(d), s))
    return tuple(out)


def poly_terms(order: int):
    """HOTPANTS's polynomial term order: x power outer, y power inner, i + j <= order."""
    return [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]


class Basis:
    """The Gaussian x polynomial kernel basis of HOTPANTS.

    Basis function ``n`` is ``x**i y**j exp(-(x^2+y^2)/(2 sigma^2))`` on a
    (2r+1)^2 grid, Gaussian by Gaussian, x power outer. Functions with both
    powers even are normalised to unit sum and, except the first, have the
    first subtracted, so only basis 0 carries flux.

    Attributes
    ----------
    r : int
        Kernel half-width.
    gaussians : tuple of (degree, sigma)
    terms : list of (gaussian index, x power, y power)
    images : ndarray, shape (n, 2r+1, 2r+1)
        The basis functions, indexed [n, y, x] with offsets -r..r.
    """

    def __init__(self, r: int, gaussians):
        self.r = int(r)
        if self.r < 1:
            raise InputError(f"kernel half-width r must be >= 1, got {r}")
        self.gaussians = parse_ng(gaussians)
        ax = np.arange(-self.r, self.r + 1, dtype=np.float64)
        self.terms, self.fx, self.fy, self.scale, self.sub0 = [], [], [], [], []
        self.gauss_1d = []
        images = []
        for g, (deg, sig) in enumerate(self.gaussians):
            gau = np.exp(-ax * ax / (2.0 * sig * sig))
            self.gauss_1d.append(gau)
            for i in range(deg + 1):
                for j in range(deg + 1 - i):
                    px, py = ax ** i * gau, ax ** j * gau
                    if i % 2 == 0 and j % 2 == 0:
                        sc = 1.0 / (px.sum() * py.sum())
                        s0 = bool(images)
                    else:
                        sc, s0 = 1.0, False
                    img = sc * np.outer(py, px)
                    if s0:
                        img = img - images[0]
                    images.append(img)
                    self.terms.append((g, i, j))
                    self.fx.append(px)
                    self.fy.append(py)
                    self.scale.append(sc)
                    self.sub0.append(s0)
        self.images = np.array(images)
        self.scale = np.array(self.scale)
        self.sub0 = np.array(self.sub0)
        self._gram = None

    @property
    def n(self) -> int:
        return len(self.terms)

    @property
    def size(self) -> int:
        return 2 * self.r + 1

    @property
    def gram(self) -> np.ndarray:
        """Gram matrix <B_n, B_m>, for sums of K^2."""
        if self._gram is None:
            flat = self.images.reshape(self.n, -1)
            self._gram = flat @ flat.T
        return self._gram

    def ng(self) -> tuple:
        """The flat HOTPANTS form (N, d1, s1, ...)."""
        out = [len(self.gaussians)]
        for d, s in self.gaussians:
            out += [d, s]
        return tuple(out)

