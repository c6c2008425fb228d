"""PSFs of simulated images: pixel-integrated Gaussian and Moffat stamps and the
field-dependent PSF (:class:`_PSFField`) that renders sources."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from diffgui.engine.errors import InputError

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(3)
_GL_NODES = _GL_NODES / 2.0  # nodes on [-0.5, 0.5]
_GL_WEIGHTS = _GL_WEIGHTS / 2.0
# Stamp pixels per rendering chunk (keeps temporaries at a few tens of MB).
_CHUNK_PIXELS = 500_000


def moffat_alpha(fwhm, beta):
    """Moffat core radius ``alpha`` for a given FWHM and ``beta``.

    The Moffat profile is ``(1 + r**2 / alpha**2) ** -beta`` and
    ``FWHM = 2 alpha sqrt(2 ** (1 / beta) - 1)``.
    """
    return np.asarray(fwhm, dtype=float) / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _gaussian_profiles(offsets, fwhm, r):
    """Pixel-integrated 1-D Gaussians, shape (n, 2r+1), each summing to 1."""
    sigma = np.asarray(fwhm, dtype=float) * FWHM_TO_SIGMA
    edges = np.arange(-r - 0.5, r + 1.0)
    z = (edges[None, :] - np.asarray(offsets, dtype=float)[:, None]) / (
        np.broadcast_to(sigma, np.shape(offsets))[:, None] * math.sqrt(2.0)
    )
    prof = np.diff(erf(z), axis=1)
    prof /= prof.sum(axis=1, keepdims=True)
    return prof


def _moffat_stamps(fx, fy, fwhm, beta, r):
    """Pixel-integrated Moffat stamps, shape (n, 2r+1, 2r+1), each summing to 1."""
    n = len(fx)
    sub = _sub_pixels(r)  # (3 size,)
    alpha = np.broadcast_to(moffat_alpha(fwhm, beta), (n,)).astype(float)
    xs = (sub[None, :] - np.asarray(fx, float)[:, None]) / alpha[:, None]
    ys = (sub[None, :] - np.asarray(fy, float)[:, None]) / alpha[:, None]
    t = 1.0 + ys[:, :, None] ** 2 + xs[:, None, :] ** 2  # (n, 3s, 3s)
    if beta == 3.0:
        val = 1.0 / (t * t * t)
    elif beta == 2.5:
        val = 1.0 / (t * t * np.sqrt(t))
    else:
        val = np.exp(-beta * np.log(t))
    return _integrate_pixels(val, 2 * r + 1)


def _sub_pixels(r):
    """Gauss-Legendre sub-sample positions of pixels -r..r, shape (3 (2r+1),)."""
    k = np.arange(-r, r + 1, dtype=float)
    return (k[:, None] + _GL_NODES[None, :]).ravel()


def _integrate_pixels(val, size):
    """Sum sub-sampled profiles (n, 3 size, 3 size) into pixels; each stamp normalised to 1."""
    # Quadrature weights summing sub-samples into pixels: (3 size, size) block matrix.
    wmat = np.zeros((3 * size, size))
    wmat[np.arange(3 * size), np.repeat(np.arange(size), 3)] = np.tile(_GL_WEIGHTS, size)
    stamps = np.matmul(np.matmul(wmat.T[None], val), wmat[None])
    stamps /= stamps.sum(axis=(1, 2), keepdims=True)
    return stamps


def _elliptical_stamps(psf, beta, fx, fy, fwhm, ell, theta, r):
    """Pixel-integrated elliptical stamps (n, 2r+1, 2r+1), each summing to 1.

    Axis ratio ``1 - ell`` with the major axis at angle ``theta`` (radians from +x);
    the axes are ``fwhm / sqrt(1 - ell)`` and ``fwhm * sqrt(1 - ell)`` (same area
    as the round PSF of ``fwhm``).
    """
    n = len(fx)
    sub = _sub_pixels(r)
    q = np.sqrt(1.0 - np.broadcast_to(np.asarray(ell, float), (n,)))
    th = np.broadcast_to(np.asarray(theta, float), (n,))
    dx = sub[None, None, :] - np.asarray(fx, float)[:, None, None]
    dy = sub[None, :, None] - np.asarray(fy, float)[:, None, None]
    c, s_ = np.cos(th)[:, None, None], np.sin(th)[:, None, None]
    u, v = dx * c + dy * s_, -dx * s_ + dy * c
    fw = np.broadcast_to(np.asarray(fwhm, float), (n,))[:, None, None]
    if psf == "gaussian":
        sig = fw * FWHM_TO_SIGMA
        val = np.exp(-0.5 * ((u * q[:, None, None] / sig) ** 2 + (v / (q[:, None, None] * sig)) ** 2))
    else:
        alpha = moffat_alpha(fw, beta)
        t = 1.0 + (u * q[:, None, None] / alpha) ** 2 + (v / (q[:, None, None] * alpha)) ** 2
        val = np.exp(-beta * np.log(t))
    return _integrate_pixels(val, 2 * r + 1)


def _stamps(psf, beta, fx, fy, fwhm, r, ell=None, theta=None):
    """Normalised pixel-integrated stamps (n, 2r+1, 2r+1) for sub-pixel offsets fx, fy
    (elliptical when ``ell`` is given, see :func:`_elliptical_stamps`)."""
    if ell is not None:
        return _elliptical_stamps(psf, beta, fx, fy, fwhm, ell, theta, r)
    if psf == "gaussian":
        px = _gaussian_profiles(fx, fwhm, r)
        py = _gaussian_profiles(fy, fwhm, r)
        return py[:, :, None] * px[:, None, :]
    return _moffat_stamps(fx, fy, fwhm, beta, r)


def psf_stamp(fwhm, size, psf="gaussian", beta=3.0, dx=0.0, dy=0.0):
    """A pixel-integrated, normalised PSF stamp.

    Parameters
    ----------
    fwhm : float
        FWHM in pixels of the PSF before pixel integration.
    size : int
        Odd stamp size.
    psf : {'gaussian', 'moffat'}
        Profile.
    beta : float
        Moffat ``beta`` (ignored for Gaussians).
    dx, dy : float
        Offset of the PSF centre from the centre of the middle pixel, in pixels.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` array summing to 1, centred on pixel ``size // 2`` plus
        ``(dx, dy)``.  These are exactly the stamps the simulator renders (same
        quadrature, truncation at the stamp edge and renormalisation).
    """
    psf = _check_psf(psf, beta)
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise InputError(f"PSF stamp size must be a positive odd integer, got {size}.")
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise InputError(f"PSF FWHM must be positive, got {fwhm}.")
    return _stamps(psf, beta, np.array([float(dx)]), np.array([float(dy)]),
                   np.array([float(fwhm)]), size // 2)[0]


def _check_psf(psf, beta):
    psf = str(psf).lower()
    if psf not in ("gaussian", "moffat"):
        raise InputError(f"psf must be 'gaussian' or 'moffat', got {psf!r}.")
    if psf == "moffat" and not (np.isfinite(beta) and beta > 1.0):
        raise InputError(f"moffat_beta must be > 1 (finite flux), got {beta}.")
    return psf


def _gradient(value, name):
    """Normalise a gradient argument to (gx, gy) floats."""
    if value is None:
        return (0.0, 0.0)
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return (float(arr) / 2.0, float(arr) / 2.0)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{name} must be None, a number or a pair (gx, gy), got {value!r}.")
    return (float(arr[0]), float(arr[1]))


def _sky_gradients(value):
    """Parse sky_gradient into ((gx, gy) science, (gx, gy) template) in ADU."""
    if value is None:
        return (0.0, 0.0), (0.0, 0.0)
    if isinstance(value, dict):
        unknown = set(value) - {"image", "template"}
        if unknown:
            raise InputError(f"sky_gradient keys must be 'image'/'template', got {sorted(unknown)}.")
        return (_gradient(value.get("image"), "sky_gradient['image']"),
                _gradient(value.get("template"), "sky_gradient['template']"))
    arr = np.asarray(value, dtype=float)
    if arr.shape == (2,):
        return (float(arr[0]), float(arr[1])), (0.0, 0.0)
    if arr.shape == (2, 2):
        return (float(arr[0, 0]), float(arr[0, 1])), (float(arr[1, 0]), float(arr[1, 1]))
    raise InputError(
        "sky_gradient must be None, (gx, gy) for the science image, "
        "((gx, gy), (gx, gy)) for science and template, or a dict; got "
        f"{value!r}."
    )


class _PSFField:
    """A spatially varying PSF over one image: FWHM map, stamps, rendering."""

    def __init__(self, psf, beta, fwhm, gradient, shape, ellipticity=None):
        self.psf = psf
        self.beta = float(beta)
        self.fwhm = float(fwhm)
        self.gradient = gradient
        self.shape = shape
        self.ellipticity = ellipticity  # None or (at the centre, at the corners)
        gx, gy = gradient
        fmin = self.fwhm * (1.0 - abs(gx) / 2.0 - abs(gy) / 2.0)
        fmax = self.fwhm * (1.0 + abs(gx) / 2.0 + abs(gy) / 2.0)
        if fmin < 0.5:
            raise InputError(
                f"FWHM {self.fwhm} with gradient {gradient} falls to {fmin:.2f} px "
                "somewhere in the field: keep it above 0.5 px."
            )
        if ellipticity is not None:  # the major axis is longer than the nominal FWHM
            fmax /= math.sqrt(1.0 - max(ellipticity))
        self.fwhm_max = fmax
        if psf == "gaussian":
            self.radius = int(math.ceil(5.0 * fmax))
            self.enclosed = 1.0
        else:
            # Radius enclosing 99.9 % of the untruncated Moffat, within [5, 10] FWHM.
            x999 = math.sqrt(1e-3 ** (1.0 / (1.0 - self.beta)) - 1.0)
            r999 = x999 * float(moffat_alpha(fmax, self.beta))
            self.radius = int(math.ceil(min(max(5.0 * fmax, r999), 10.0 * fmax)))
            # Fraction of the untruncated Moffat (nominal FWHM) inside the square
            # stamp: the GL pixel averages integrate the profile over the square,
            # whose full-plane integral is pi alpha**2 / (beta - 1).
            alpha = float(moffat_alpha(self.fwhm, self.beta))
            k = np.arange(-self.radius, self.radius + 1, dtype=float)
            sub = ((k[:, None] + _GL_NODES[None, :]) / alpha).ravel()
            w1 = np.tile(_GL_WEIGHTS, k.size)
            t = 1.0 + sub[:, None] ** 2 + sub[None, :] ** 2
            inside = float(w1 @ np.exp(-self.beta * np.log(t)) @ w1)
            self.enclosed = inside / (math.pi * alpha ** 2 / (self.beta - 1.0))

    def fwhm_at(self, x, y):
        h, w = self.shape
        u = np.asarray(x, float) / max(w - 1, 1) - 0.5
        v = np.asarray(y, float) / max(h - 1, 1) - 0.5
        return self.fwhm * (1.0 + self.gradient[0] * u + self.gradient[1] * v)

    def shape_at(self, x, y):
        """``(ellipticity, position angle)`` at ``(x, y)``: the ellipticity grows linearly
        from the centre to the corners, the major axis is tangential (as optical
        aberrations make it); ``(None, None)`` for round PSFs."""
        if self.ellipticity is None:
            return None, None
        h, w = self.shape
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        dx, dy = np.asarray(x, float) - cx, np.asarray(y, float) - cy
        rr = np.hypot(dx / max(cx, 1), dy / max(cy, 1)) / math.sqrt(2.0)
        e0, e1 = self.ellipticity
        return e0 + (e1 - e0) * np.clip(rr, 0, 1), np.arctan2(dy, dx) + math.pi / 2

    def stamp(self, x, y, size=None, normalize=True):
        r = self.radius
        ix, iy = int(np.rint(x)), int(np.rint(y))
        ell, theta = self.shape_at(x, y)
        full = _stamps(self.psf, self.beta, np.array([x - ix]), np.array([y - iy]),
                       np.atleast_1d(self.fwhm_at(x, y)), r,
                       None if ell is None else np.atleast_1d(ell),
                       None if theta is None else np.atleast_1d(theta))[0]
        if size is None:
            return full
        size = int(size)
        if size < 1 or size % 2 == 0:
            raise InputError(f"PSF stamp size must be a positive odd integer, got {size}.")
        h = size // 2
        if h >= r:
            out = np.zeros((size, size))
            out[h - r:h + r + 1, h - r:h + r + 1] = full
            return out
        out = full[r - h:r + h + 1, r - h:r + h + 1].copy()
        if normalize:
            out /= out.sum()
        return out

    def render(self, image, x, y, flux):
        """Add point sources of ``flux`` at ``(x, y)`` to ``image`` in place."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        flux = np.asarray(flux, float)
        if x.size == 0:
            return
        h, w = image.shape
        ix = np.rint(x).astype(np.int64)
        iy = np.rint(y).astype(np.int64)
        # Sorting by position keeps the scattered adds cache-friendly.
        order = np.lexsort((ix, iy))
        r = self.radius
        size = 2 * r + 1
        k = np.arange(-r, r + 1)
        per_star = size * size * (9 if self.psf == "moffat" else 1)
        chunk = max(1, _CHUNK_PIXELS // per_star)
        flat = image.reshape(-1)
        fwhm = self.fwhm_at(x, y)
        ell, theta = self.shape_at(x, y)
        if ell is not None:
            chunk = max(1, chunk // 9) if self.psf == "gaussian" else chunk
        for start in range(0, x.size, chunk):
            sel = order[start:start + chunk]
            stamps = _stamps(self.psf, self.beta, x[sel] - ix[sel], y[sel] - iy[sel],
                             fwhm[sel], r, None if ell is None else ell[sel],
                             None if theta is None else theta[sel])
            stamps *= flux[sel, None, None]
            cols = ix[sel, None] + k[None, :]
            rows = iy[sel, None] + k[None, :]
            valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            idx = rows[:, :, None] * w + cols[:, None, :]
            if valid.all():
                np.add.at(flat, idx.reshape(-1), stamps.reshape(-1))
            else:
                np.add.at(flat, idx[valid], stamps[valid])
