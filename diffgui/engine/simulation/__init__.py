"""Simulated science/template pairs with known truth, for tests, the demo and benchmarks.

A pair is drawn from one star catalogue placed twice, once with the template PSF and
once with the (broader) science PSF, on independent noise.  Everything that a
subtraction method has to recover is recorded: PSFs at any position, the
science/template flux ratio, backgrounds, true per-pixel noise, saturated stars and
transients with their fluxes and the best S/N any method could reach.

Conventions
-----------
* Arrays are ``[y, x]``; table coordinates are 0-based pixel centres (numpy/sep).
* ``flux_scale`` is the **science / template** flux ratio: a star of template flux
  ``T`` has science flux ``flux_scale * T``.  stdpipe's ``F_r`` (template / science)
  is ``1 / flux_scale``.
* ``template_shift = (dx, dy)``: a source at science position ``(x, y)`` lies at
  ``(x + dx, y + dy)`` in the template.
* Spatial gradients use normalised coordinates ``u = x / (W - 1) - 0.5`` and
  ``v = y / (H - 1) - 0.5`` (both in ``[-0.5, 0.5]``), so the nominal value is the value
  at the image centre.  FWHM and flux-scale gradients are *fractional*:
  ``value(x, y) = nominal * (1 + gx * u + gy * v)``; ``gx`` is the fractional change
  from the ``x = 0`` edge to the ``x = W - 1`` edge.  A scalar ``g`` means
  ``(g / 2, g / 2)``: a fractional change ``g`` from the ``(0, 0)`` corner to the
  opposite corner.  Sky gradients are in ADU: ``sky(x, y) = sky + gx * u + gy * v``.
* PSFs are pixel-integrated (Gaussian: exact ``erf`` integrals, separable; Moffat:
  3 x 3 Gauss-Legendre quadrature in every pixel, more accurate than 5 x 5
  sub-sampling), placed at the exact sub-pixel position, and truncated to a square
  stamp of half-size ``truth['image_psf_radius']`` (Gaussian: ``ceil(5 FWHM)``; Moffat:
  at least 5 FWHM and the radius enclosing 99.9 % of the untruncated Moffat, at most
  10 FWHM).  The truncated stamp is renormalised to 1, so every star deposits exactly
  its catalogue flux; ``truth['image_psf_enclosed']`` records which fraction of the
  untruncated profile the stamp holds (1 for Gaussians to 1e-10).
  :meth:`SimulatedPair.image_psf` returns exactly the stamps used for rendering.
* Noise: Poisson on (sky + sources) in electrons, then Gaussian read noise in
  electrons, converted back to ADU.  The true sigma map is
  ``sqrt(model / gain + (readnoise / gain) ** 2)`` in ADU, with ``model`` the noiseless
  image in ADU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np
from astropy.table import Table
from scipy.special import erf

from diffgui.engine.errors import InputError

__all__ = [
    "SimulatedPair",
    "simulate_pair",
    "make_demo_pair",
    "make_reference_pair",
    "psf_stamp",
    "moffat_alpha",
    "FWHM_TO_SIGMA",
]

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_KINDS = ("new", "brighten", "fade")
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
    size = 2 * r + 1
    k = np.arange(-r, r + 1, dtype=float)
    sub = (k[:, None] + _GL_NODES[None, :]).ravel()  # (3 size,)
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
    # Quadrature weights summing sub-samples into pixels: (3 size, size) block matrix.
    wmat = np.zeros((3 * size, size))
    wmat[np.arange(3 * size), np.repeat(np.arange(size), 3)] = np.tile(_GL_WEIGHTS, size)
    stamps = np.matmul(np.matmul(wmat.T[None], val), wmat[None])
    stamps /= stamps.sum(axis=(1, 2), keepdims=True)
    return stamps


def _stamps(psf, beta, fx, fy, fwhm, r):
    """Normalised pixel-integrated stamps (n, 2r+1, 2r+1) for sub-pixel offsets fx, fy."""
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

    def __init__(self, psf, beta, fwhm, gradient, shape):
        self.psf = psf
        self.beta = float(beta)
        self.fwhm = float(fwhm)
        self.gradient = gradient
        self.shape = shape
        gx, gy = gradient
        fmin = self.fwhm * (1.0 - abs(gx) / 2.0 - abs(gy) / 2.0)
        fmax = self.fwhm * (1.0 + abs(gx) / 2.0 + abs(gy) / 2.0)
        if fmin < 0.5:
            raise InputError(
                f"FWHM {self.fwhm} with gradient {gradient} falls to {fmin:.2f} px "
                "somewhere in the field: keep it above 0.5 px."
            )
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

    def stamp(self, x, y, size=None, normalize=True):
        r = self.radius
        ix, iy = int(np.rint(x)), int(np.rint(y))
        full = _stamps(self.psf, self.beta, np.array([x - ix]), np.array([y - iy]),
                       np.atleast_1d(self.fwhm_at(x, y)), r)[0]
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
        for start in range(0, x.size, chunk):
            sel = order[start:start + chunk]
            stamps = _stamps(self.psf, self.beta, x[sel] - ix[sel], y[sel] - iy[sel],
                             fwhm[sel], r)
            stamps *= flux[sel, None, None]
            cols = ix[sel, None] + k[None, :]
            rows = iy[sel, None] + k[None, :]
            valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            idx = rows[:, :, None] * w + cols[:, None, :]
            if valid.all():
                np.add.at(flat, idx.reshape(-1), stamps.reshape(-1))
            else:
                np.add.at(flat, idx[valid], stamps[valid])


@dataclass(eq=False)
class SimulatedPair:
    """A simulated, aligned science/template pair and its truth.

    Attributes
    ----------
    image, template : numpy.ndarray
        Noisy science and template images (float64 ADU, clipped at saturation).
    image_noise, template_noise : numpy.ndarray
        True per-pixel sigma (ADU): sky, source Poisson and read noise.
    image_model, template_model : numpy.ndarray
        Noiseless images (sky + sources, ADU, not clipped).
    image_mask, template_mask : numpy.ndarray or None
        Saturated (clipped) pixels, True = bad; None without saturation.
    stars : astropy.table.Table
        One row per star: ``id, x, y`` (science frame), ``template_x, template_y``,
        ``template_flux`` (template ADU), ``image_flux`` (science ADU, including any
        transient on it), ``flux_scale``, ``image_fwhm``, ``template_fwhm``,
        ``saturated`` (science), ``template_saturated``, ``variable`` (hosts a
        transient), ``transient`` (index into ``transients`` or -1).
    transients : astropy.table.Table
        ``id, x, y`` (science frame), ``flux`` (science ADU, signed: negative for
        'fade'), ``kind`` ('new', 'brighten', 'fade'), ``host_flux`` (template ADU of
        the host star, 0 for 'new'), ``star`` (row in ``stars`` or -1),
        ``ideal_snr`` (:meth:`ideal_snr` of ``|flux|``, always >= 0).
    truth : dict
        All simulation parameters after parsing (``image_fwhm``, ``template_fwhm``,
        gradients, ``flux_scale``, ``flux_scale_gradient``, skies, gains,
        read noises, ``saturation``, ``template_shift``, ``psf``, ``moffat_beta``,
        ``image_psf_radius``, ``template_psf_radius``, ``image_psf_enclosed``,
        ``template_psf_enclosed``, ``stdpipe_flux_ratio`` = 1 / flux_scale, ``seed`` ...).

    ``image_background`` and ``template_background`` (the true sky maps) are
    computed on first access.
    """

    image: np.ndarray
    template: np.ndarray
    image_noise: np.ndarray
    template_noise: np.ndarray
    image_model: np.ndarray
    template_model: np.ndarray
    image_mask: Optional[np.ndarray]
    template_mask: Optional[np.ndarray]
    stars: Table
    transients: Table
    truth: dict
    _image_psf: _PSFField = field(repr=False)
    _template_psf: _PSFField = field(repr=False)

    # ---- backgrounds -------------------------------------------------------------
    def _sky(self, which):
        out = np.empty(self.truth["shape"])
        _fill_sky(out, self.truth, which)
        return out

    @cached_property
    def image_background(self):
        """True science sky map (ADU)."""
        return self._sky("image")

    @cached_property
    def template_background(self):
        """True template sky map (ADU)."""
        return self._sky("template")

    # ---- truth as functions of position -----------------------------------------
    def flux_scale_at(self, x, y):
        """Science / template flux ratio at science position(s) ``(x, y)``.

        stdpipe's ``F_r`` (template / science) is the inverse of this.
        """
        h, w = self.truth["shape"]
        gx, gy = self.truth["flux_scale_gradient"]
        u = np.asarray(x, float) / max(w - 1, 1) - 0.5
        v = np.asarray(y, float) / max(h - 1, 1) - 0.5
        return self.truth["flux_scale"] * (1.0 + gx * u + gy * v)

    def fwhm_at(self, which, x, y):
        """True FWHM (pixels, before pixel integration) of ``which`` ('image' or
        'template') at position(s) ``(x, y)`` in that image's own frame."""
        return self._field(which).fwhm_at(x, y)

    def _field(self, which):
        if which in ("image", "science"):
            return self._image_psf
        if which == "template":
            return self._template_psf
        raise InputError(f"which must be 'image' or 'template', got {which!r}.")

    def image_psf(self, x, y, size=None, normalize=True):
        """True science PSF stamp at science position ``(x, y)``.

        Parameters
        ----------
        x, y : float
            Position; the stamp is centred on pixel ``(round(x), round(y))`` with the
            PSF centre offset by ``(x - round(x), y - round(y))``.  Integer positions
            give a centred PSF.
        size : int, optional
            Odd stamp size.  None (default) gives the full rendering footprint
            ``2 * truth['image_psf_radius'] + 1``, which sums to 1 and equals the
            unit-flux rendering exactly.  Larger sizes are zero-padded (the true PSF
            is truncated); smaller ones are cropped and, if ``normalize``,
            renormalised to sum to 1.
        normalize : bool
            See ``size``.
        """
        return self._image_psf.stamp(float(x), float(y), size, normalize)

    def template_psf(self, x, y, size=None, normalize=True):
        """True template PSF stamp at *template* position ``(x, y)``.

        A source at science position ``(xs, ys)`` is at template position
        ``(xs + dx, ys + dy)`` with ``(dx, dy) = truth['template_shift']``.
        Arguments as in :meth:`image_psf`.
        """
        return self._template_psf.stamp(float(x), float(y), size, normalize)

    def difference_noise(self):
        """Sigma map of the ideal difference ``image - flux_scale(x, y) * template``
        (no PSF matching): ``sqrt(image_noise**2 + flux_scale**2 template_noise**2)``."""
        h, w = self.truth["shape"]
        s = self.flux_scale_at(np.arange(w)[None, :], np.arange(h)[:, None])
        return np.sqrt(self.image_noise ** 2 + (s * self.template_noise) ** 2)

    def ideal_snr(self, flux, x, y, include_source=True):
        """Optimal S/N of a point source of science ``flux`` at ``(x, y)`` in the
        ideal difference.

        PSF-fit (matched-filter) S/N for a known PSF ``P`` and position, on
        ``D = I - s T`` without PSF-matching losses::

            S/N = sqrt( sum_i F**2 P_i**2 / var_i ),
            var_i = sigma_I0,i**2 + s_i**2 sigma_T,i**2 + F P_i / g_I

        where ``sigma_I0`` is the science noise without any transient (sky, stars,
        read noise), ``sigma_T`` the template noise (including host stars), ``s_i`` the
        flux scale and ``F P_i / g_I`` the source's own Poisson variance (signed: a
        fading star removes variance).  Sums run over the rendering footprint.

        Parameters
        ----------
        flux : float or array_like
            Science-ADU flux (sign as in the transients table; the S/N is of ``|F|``).
        x, y : float or array_like
            Science positions.
        include_source : bool
            Include the source's own Poisson term (default).  stdpipe-reference.md §6
            quotes ideal S/N without it (37.9 at 5000 ADU); with it the same pair gives
            about 35.

        Returns
        -------
        float or numpy.ndarray
            Non-negative S/N, same shape as the broadcast inputs.
        """
        flux, x, y = np.broadcast_arrays(np.asarray(flux, float), np.asarray(x, float),
                                         np.asarray(y, float))
        out = np.empty(flux.shape)
        for i in np.ndindex(flux.shape):
            out[i] = self._ideal_snr_one(flux[i], x[i], y[i], include_source)
        return out if out.ndim else float(out)

    def _ideal_snr_one(self, flux, x, y, include_source=True):
        h, w = self.truth["shape"]
        f = self._image_psf
        r = f.radius
        ix, iy = int(np.rint(x)), int(np.rint(y))
        psf = f.stamp(x, y)
        y0, y1 = max(iy - r, 0), min(iy + r + 1, h)
        x0, x1 = max(ix - r, 0), min(ix + r + 1, w)
        if y0 >= y1 or x0 >= x1:
            return 0.0
        p = psf[y0 - (iy - r):y1 - (iy - r), x0 - (ix - r):x1 - (ix - r)]
        static = self.image_model[y0:y1, x0:x1].copy()
        # Remove transients overlapping the footprint: sigma_I0 is transient-free.
        tr = self.transients
        if len(tr):
            near = (np.abs(tr["x"] - x) <= 2 * r + 1) & (np.abs(tr["y"] - y) <= 2 * r + 1)
            for row in tr[near]:
                layer = np.zeros((y1 - y0 + 2 * r, x1 - x0 + 2 * r))
                f.render(layer, [row["x"] - x0 + r], [row["y"] - y0 + r], [row["flux"]])
                static -= layer[r:r + y1 - y0, r:r + x1 - x0]
        g = self.truth["image_gain"]
        rn = self.truth["image_readnoise"]
        yy, xx = np.mgrid[y0:y1, x0:x1]
        s = self.flux_scale_at(xx, yy)
        var = (np.clip(static, 0, None) / g + (rn / g) ** 2
               + (s * self.template_noise[y0:y1, x0:x1]) ** 2)
        if include_source:
            var = var + flux * p / g
        var = np.clip(var, 1e-12, None)
        return float(abs(flux) * math.sqrt(np.sum(p * p / var)))


_ROWS = 256  # rows per block for full-image passes (bounds temporaries)


def _sky_parts(truth, which):
    """Sky as column + row vectors: sky(x, y) = col[y] + row[x]."""
    h, w = truth["shape"]
    gx, gy = truth[f"{which}_sky_gradient"]
    u = np.arange(w) / max(w - 1, 1) - 0.5
    v = np.arange(h) / max(h - 1, 1) - 0.5
    return truth[f"{which}_sky"] + gy * v, gx * u


def _fill_sky(out, truth, which):
    col, row = _sky_parts(truth, which)
    out[:] = col[:, None]
    out += row[None, :]


def _noise_map(model, gain, readnoise):
    """True sigma (ADU) of Poisson(model * gain) + read noise, in row blocks."""
    out = np.empty_like(model)
    rn2 = (readnoise / gain) ** 2
    for r0 in range(0, model.shape[0], _ROWS):
        blk = out[r0:r0 + _ROWS]
        np.maximum(model[r0:r0 + _ROWS], 0.0, out=blk)
        blk /= gain
        blk += rn2
        np.sqrt(blk, out=blk)
    return out


def _star_light_integral(pair):
    """Summed-area table of the noiseless star light of the science image."""
    h, w = pair.truth["shape"]
    integral = np.zeros((h + 1, w + 1))
    icol, irow = _sky_parts(pair.truth, "image")
    for r0 in range(0, h, _ROWS):
        r1 = min(r0 + _ROWS, h)
        blk = integral[1 + r0:1 + r1, 1:]
        np.subtract(pair.image_model[r0:r1], icol[r0:r1, None], out=blk)
        blk -= irow[None, :]
    np.cumsum(integral, axis=0, out=integral)
    np.cumsum(integral, axis=1, out=integral)
    return integral


def _power_law_fluxes(rng, n, flux_range, slope):
    """Fluxes with N(>F) proportional to F**-slope on flux_range (slope 0: log-uniform)."""
    fmin, fmax = float(flux_range[0]), float(flux_range[1])
    if not (0 < fmin <= fmax and np.isfinite(fmax)):
        raise InputError(f"star_flux_range must be 0 < min <= max, got {flux_range!r}.")
    u = rng.random(n)
    if fmin == fmax:
        return np.full(n, fmin)
    if abs(slope) < 1e-12:
        return fmin * (fmax / fmin) ** u
    a = -float(slope)
    lo, hi = fmin ** a, fmax ** a
    return (lo + u * (hi - lo)) ** (1.0 / a)


def _positive(name, value, allow_zero=False):
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}.")
    return v


def _parse_transients(transients):
    """Return (count, list_of_dicts): exactly one of the two is used."""
    if transients is None:
        return 0, []
    if isinstance(transients, (int, np.integer)):
        if transients < 0:
            raise InputError(f"transients count must be >= 0, got {transients}.")
        return int(transients), []
    out = []
    for i, t in enumerate(transients):
        if not isinstance(t, dict):
            raise InputError(f"transients[{i}] must be a dict, got {type(t).__name__}.")
        missing = {"x", "y", "flux"} - set(t)
        if missing:
            raise InputError(f"transients[{i}] lacks {sorted(missing)}: give x, y, flux (science ADU).")
        kind = str(t.get("kind", "new")).lower()
        if kind not in _KINDS:
            raise InputError(f"transients[{i}]['kind'] must be one of {_KINDS}, got {kind!r}.")
        flux = float(t["flux"])
        if not np.isfinite(flux) or flux == 0:
            raise InputError(f"transients[{i}]['flux'] must be finite and non-zero.")
        out.append({"x": float(t["x"]), "y": float(t["y"]), "kind": kind,
                    "flux": -abs(flux) if kind == "fade" else abs(flux),
                    "host_flux": t.get("host_flux")})
    return 0, out


def _star_free_spots(rng, n, integral, noise_sigma, margin, min_sep):
    """Pick n positions at least min_sep apart where the star light in a box around
    them is below the box's noise (1 sigma * sqrt(npix): no star above S/N ~3 there);
    the limits are relaxed step by step when the field is too crowded or too small."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    if w - 1 - 2 * margin <= 0 or h - 1 - 2 * margin <= 0:
        raise InputError(f"the image is too small to keep transients {margin} px from its edges.")
    box = max(2, int(round(min_sep / 4)))
    npix = (2 * box + 1) ** 2
    limit = noise_sigma * math.sqrt(npix)
    chosen = []
    # Relax the star-light limit first, then the separation (small images).
    for relax, sep_factor in ((1.0, 1.0), (3.0, 1.0), (10.0, 1.0), (10.0, 0.75), (30.0, 0.5)):
        sep2 = (min_sep * sep_factor) ** 2
        for _ in range(10):
            m = max(200, 50 * n)
            cx = rng.uniform(margin, w - 1 - margin, m)
            cy = rng.uniform(margin, h - 1 - margin, m)
            ix, iy = np.rint(cx).astype(int), np.rint(cy).astype(int)
            x0, x1 = np.clip(ix - box, 0, w), np.clip(ix + box + 1, 0, w)
            y0, y1 = np.clip(iy - box, 0, h), np.clip(iy + box + 1, 0, h)
            s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            for j in np.flatnonzero(s < limit * relax):
                if all((cx[j] - a) ** 2 + (cy[j] - b) ** 2 >= sep2 for a, b in chosen):
                    chosen.append((cx[j], cy[j]))
                    if len(chosen) == n:
                        return np.array(chosen)
    raise InputError(
        f"could not place {n} transients in star-free spots at least {min_sep / 2:.0f} px apart: "
        "use fewer transients, fewer stars or a larger image."
    )


def _flux_for_snr(pair_like, target, x, y):
    """Flux (science ADU) whose ideal S/N at (x, y) is ``target`` (fixed point)."""
    f = target * 10.0
    for _ in range(60):
        snr = pair_like.ideal_snr(f, x, y)
        if snr <= 0:
            break
        nf = f * target / snr
        if abs(nf - f) < 1e-6 * f:
            f = nf
            break
        f = nf
    return f


def simulate_pair(
    shape=(512, 512),
    n_stars=None,
    star_flux_range=(10 ** 2.5, 10 ** 4.7),
    flux_slope=0.0,
    psf="gaussian",
    moffat_beta=3.0,
    image_fwhm=3.5,
    template_fwhm=2.5,
    image_fwhm_gradient=None,
    template_fwhm_gradient=None,
    flux_scale=1.1,
    flux_scale_gradient=None,
    image_sky=1000.0,
    template_sky=500.0,
    sky_gradient=None,
    image_gain=2.0,
    template_gain=10.0,
    image_readnoise=10.0,
    template_readnoise=3.0,
    saturation=None,
    template_shift=(0.0, 0.0),
    transients=None,
    transient_snr_range=(5.0, 100.0),
    edge=10,
    seed=None,
):
    """Simulate an aligned science/template pair with known truth.

    Defaults follow the stdpipe peer-measurement pair (stdpipe-reference.md §6):
    Gaussian PSFs of FWHM 3.5 (science) and 2.5 (template), skies 1000 and 500 ADU,
    gains 2 and 10 e-/ADU, read noise 10 and 3 e-, science fluxes x1.1.

    Parameters
    ----------
    shape : (int, int)
        ``(height, width)``.
    n_stars : int, optional
        Number of stars; default 1500 per 1024 x 1024 pixels (375 at 512 x 512).
    star_flux_range : (float, float)
        Template-ADU flux range of the stars.
    flux_slope : float
        Power-law index ``a`` of the cumulative counts ``N(>F) ~ F**-a`` (0 gives
        log-uniform fluxes as stdpipe draws them; 1.5 is the Euclidean slope).
    psf : {'gaussian', 'moffat'}
        PSF profile of both images.
    moffat_beta : float
        Moffat ``beta`` (> 1).
    image_fwhm, template_fwhm : float
        FWHM (pixels, before pixel integration) at the image centre.
    image_fwhm_gradient, template_fwhm_gradient : float or (float, float), optional
        Fractional FWHM change: a scalar is the change from corner (0, 0) to the
        opposite corner, a pair ``(gx, gy)`` the change across each axis.
    flux_scale : float
        Science / template flux ratio at the centre (stdpipe's ``F_r`` is its inverse).
    flux_scale_gradient : float or (float, float), optional
        Fractional change of ``flux_scale`` across the field, as for FWHM.
    image_sky, template_sky : float
        Sky levels (ADU) at the centre.
    sky_gradient : optional
        Sky change in ADU across the field per axis: ``(gx, gy)`` for the science
        image only, ``((gx, gy), (gx, gy))`` for science and template, or
        ``{'image': (gx, gy), 'template': (gx, gy)}``.
    image_gain, template_gain : float
        Gains (e-/ADU).
    image_readnoise, template_readnoise : float
        Read noise (e-).
    saturation : float or (float, float), optional
        Saturation level in ADU (one for both images or one per image).  Pixels are
        clipped at it, ``image_mask``/``template_mask`` mark them and the stars
        table flags stars with a clipped pixel within 1 pixel of their centre.
    template_shift : (float, float)
        ``(dx, dy)``: template position minus science position of every source.
    transients : int or list of dict, optional
        An int places that many transients in star-free spots, kinds cycling
        'new', 'brighten', 'fade', with ideal S/N log-spaced over
        ``transient_snr_range`` (each kind spans the range; fading hosts alternate
        between vanishing and halving).  A list gives them explicitly: dicts with
        ``x, y`` (science frame), ``flux`` (science ADU; the sign is set by the kind),
        ``kind`` ('new' default, 'brighten': extra flux on a host star, 'fade': a host
        star losing ``|flux|``) and optionally ``host_flux`` (template ADU of the host
        star that is created at ``(x, y)``; default ``|flux| / flux_scale``, so a
        'fade' star vanishes and a 'brighten' star doubles).
    transient_snr_range : (float, float)
        Ideal S/N range for transients given as a count.
    edge : int
        Margin (pixels) kept free of star centres; transients keep at least the PSF
        footprint radius from the edges.
    seed : int, optional
        Seed of ``numpy.random.default_rng``.  Star catalogue, transient placement,
        science noise and template noise use independent child streams.  None draws
        fresh entropy and records it in ``truth['seed']``.

    Returns
    -------
    SimulatedPair
    """
    # ---- parse and validate ---------------------------------------------------
    try:
        h, w = (int(v) for v in shape)
    except Exception:
        raise InputError(f"shape must be (height, width), got {shape!r}.") from None
    if h < 16 or w < 16:
        raise InputError(f"shape must be at least 16 x 16, got {shape!r}.")
    psf = _check_psf(psf, moffat_beta)
    moffat_beta = float(moffat_beta)
    image_fwhm = _positive("image_fwhm", image_fwhm)
    template_fwhm = _positive("template_fwhm", template_fwhm)
    flux_scale = _positive("flux_scale", flux_scale)
    image_gain = _positive("image_gain", image_gain)
    template_gain = _positive("template_gain", template_gain)
    image_readnoise = _positive("image_readnoise", image_readnoise, allow_zero=True)
    template_readnoise = _positive("template_readnoise", template_readnoise, allow_zero=True)
    image_sky = _positive("image_sky", image_sky, allow_zero=True)
    template_sky = _positive("template_sky", template_sky, allow_zero=True)
    fs_grad = _gradient(flux_scale_gradient, "flux_scale_gradient")
    img_sky_grad, tpl_sky_grad = _sky_gradients(sky_gradient)
    for name, sky, (gx, gy) in (("image", image_sky, img_sky_grad),
                                ("template", template_sky, tpl_sky_grad)):
        if sky - abs(gx) / 2 - abs(gy) / 2 < 0:
            raise InputError(f"the {name} sky gradient makes the sky negative somewhere.")
    if 1.0 - abs(fs_grad[0]) / 2 - abs(fs_grad[1]) / 2 <= 0:
        raise InputError("flux_scale_gradient makes the flux scale non-positive somewhere.")
    if saturation is None:
        sat_img = sat_tpl = None
    else:
        sat = np.atleast_1d(np.asarray(saturation, dtype=float))
        if sat.size not in (1, 2):
            raise InputError(f"saturation must be None, a level or (image, template), got {saturation!r}.")
        sat_img = _positive("saturation", sat[0])
        sat_tpl = _positive("saturation", sat[-1])
    try:
        shift = (float(template_shift[0]), float(template_shift[1]))
    except Exception:
        raise InputError(f"template_shift must be (dx, dy), got {template_shift!r}.") from None
    edge = int(edge)
    if edge < 0 or 2 * edge >= min(h, w) - 1:
        raise InputError(f"edge {edge} leaves no room in a {h} x {w} image.")
    if n_stars is None:
        n_stars = int(round(1500 * h * w / 1024 ** 2))
    n_stars = int(n_stars)
    if n_stars < 0:
        raise InputError(f"n_stars must be >= 0, got {n_stars}.")
    n_tr, tr_list = _parse_transients(transients)

    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    root = np.random.default_rng(seed)
    rng_cat, rng_tr, rng_img, rng_tpl = root.spawn(4)

    ipsf = _PSFField(psf, moffat_beta, image_fwhm, _gradient(image_fwhm_gradient, "image_fwhm_gradient"), (h, w))
    tpsf = _PSFField(psf, moffat_beta, template_fwhm,
                     _gradient(template_fwhm_gradient, "template_fwhm_gradient"), (h, w))

    truth = {
        "shape": (h, w), "seed": seed, "psf": psf, "moffat_beta": moffat_beta,
        "image_fwhm": image_fwhm, "template_fwhm": template_fwhm,
        "image_fwhm_gradient": ipsf.gradient, "template_fwhm_gradient": tpsf.gradient,
        "flux_scale": flux_scale, "flux_scale_gradient": fs_grad,
        "stdpipe_flux_ratio": 1.0 / flux_scale,
        "image_sky": image_sky, "template_sky": template_sky,
        "image_sky_gradient": img_sky_grad, "template_sky_gradient": tpl_sky_grad,
        "image_gain": image_gain, "template_gain": template_gain,
        "image_readnoise": image_readnoise, "template_readnoise": template_readnoise,
        "saturation": (sat_img, sat_tpl), "template_shift": shift,
        "n_stars": n_stars, "star_flux_range": tuple(float(v) for v in star_flux_range),
        "flux_slope": float(flux_slope), "edge": edge,
        "image_psf_radius": ipsf.radius, "template_psf_radius": tpsf.radius,
        "image_psf_enclosed": ipsf.enclosed, "template_psf_enclosed": tpsf.enclosed,
        "flux_scale_convention": "science / template (stdpipe F_r = 1 / flux_scale)",
    }

    # ---- catalogue -------------------------------------------------------------
    sx = rng_cat.uniform(edge, w - 1 - edge, n_stars)
    sy = rng_cat.uniform(edge, h - 1 - edge, n_stars)
    tflux = _power_law_fluxes(rng_cat, n_stars, star_flux_range, flux_slope)

    pair = SimulatedPair(
        image=None, template=None, image_noise=None, template_noise=None,
        image_model=np.empty((h, w)), template_model=np.empty((h, w)),
        image_mask=None, template_mask=None, stars=None,
        transients=Table(names=("x", "y", "flux"), dtype=(float, float, float)),
        truth=truth, _image_psf=ipsf, _template_psf=tpsf,
    )
    _fill_sky(pair.image_model, truth, "image")
    _fill_sky(pair.template_model, truth, "template")
    tpsf.render(pair.template_model, sx + shift[0], sy + shift[1], tflux)
    ipsf.render(pair.image_model, sx, sy, pair.flux_scale_at(sx, sy) * tflux)
    # Template noise is static; needed by ideal_snr while choosing transient fluxes.
    pair.template_noise = _noise_map(pair.template_model, template_gain, template_readnoise)

    # ---- transients --------------------------------------------------------------
    tr_rows = []
    if n_tr:
        margin = max(edge, ipsf.radius + 2, tpsf.radius + 2 + int(math.ceil(max(map(abs, shift)))))
        integral = _star_light_integral(pair)
        bg_sigma = math.sqrt(image_sky / image_gain + (image_readnoise / image_gain) ** 2)
        min_sep = 2 * ipsf.radius + 1
        spots = _star_free_spots(rng_tr, n_tr, integral, bg_sigma, margin, min_sep)
        del integral
        lo, hi = (float(v) for v in transient_snr_range)
        if not (0 < lo <= hi):
            raise InputError(f"transient_snr_range must be 0 < min <= max, got {transient_snr_range!r}.")
        targets = np.geomspace(lo, hi, n_tr)
        kinds = [_KINDS[i % 3] for i in range(n_tr)]
        for i, ((x, y), target, kind) in enumerate(zip(spots, targets, kinds)):
            f = _flux_for_snr(pair, target, x, y)
            s = float(pair.flux_scale_at(x, y))
            if kind == "new":
                host = 0.0
            elif kind == "brighten":
                host = f / s * 10 ** rng_tr.uniform(-0.5, 0.5)
            else:
                n_fade = i // 3
                host = f / s * (1.0 if n_fade % 2 == 0 else 2.0)
            tr_rows.append({"x": float(x), "y": float(y), "kind": kind,
                            "flux": -f if kind == "fade" else f, "host_flux": host})
    else:
        for t in tr_list:
            s = float(pair.flux_scale_at(t["x"], t["y"]))
            host = t["host_flux"]
            if t["kind"] == "new":
                host = 0.0
            elif host is None:
                host = abs(t["flux"]) / s
            else:
                host = float(host)
                if not np.isfinite(host) or host <= 0:
                    raise InputError("host_flux of a 'brighten'/'fade' transient must be > 0.")
                if t["kind"] == "fade" and host * s < abs(t["flux"]) * (1 - 1e-9):
                    raise InputError(
                        f"a 'fade' transient of {abs(t['flux']):g} ADU needs a host of at least "
                        f"{abs(t['flux']) / s:g} template ADU, got host_flux={host:g}."
                    )
            tr_rows.append(dict(t, host_flux=host))

    # Host stars join the catalogue; transients are rendered as signed extra sources.
    n_cat = n_stars
    hosts = [(i, r) for i, r in enumerate(tr_rows) if r["kind"] != "new"]
    if hosts:
        hx = np.array([r["x"] for _, r in hosts])
        hy = np.array([r["y"] for _, r in hosts])
        hf = np.array([r["host_flux"] for _, r in hosts])
        tpsf.render(pair.template_model, hx + shift[0], hy + shift[1], hf)
        ipsf.render(pair.image_model, hx, hy, pair.flux_scale_at(hx, hy) * hf)
        sx, sy, tflux = np.r_[sx, hx], np.r_[sy, hy], np.r_[tflux, hf]
        pair.template_noise = _noise_map(pair.template_model, template_gain, template_readnoise)
    star_of_tr = np.full(len(tr_rows), -1)
    tr_of_star = np.full(sx.size, -1)
    for j, (i, _) in enumerate(hosts):
        star_of_tr[i] = n_cat + j
        tr_of_star[n_cat + j] = i
    if tr_rows:
        ipsf.render(pair.image_model, [r["x"] for r in tr_rows], [r["y"] for r in tr_rows],
                    [r["flux"] for r in tr_rows])
    pair.transients = Table(
        {
            "id": np.arange(len(tr_rows)),
            "x": np.array([r["x"] for r in tr_rows], float),
            "y": np.array([r["y"] for r in tr_rows], float),
            "flux": np.array([r["flux"] for r in tr_rows], float),
            "kind": np.array([r["kind"] for r in tr_rows], dtype="U8"),
            "host_flux": np.array([r["host_flux"] for r in tr_rows], float),
            "star": star_of_tr,
        }
    )

    # ---- noise -------------------------------------------------------------------
    pair.image_noise = _noise_map(pair.image_model, image_gain, image_readnoise)
    pair.image = _noisy(rng_img, pair.image_model, image_gain, image_readnoise)
    pair.template = _noisy(rng_tpl, pair.template_model, template_gain, template_readnoise)
    if sat_img is not None:
        pair.image_mask = pair.image >= sat_img
        np.minimum(pair.image, sat_img, out=pair.image)
        pair.template_mask = pair.template >= sat_tpl
        np.minimum(pair.template, sat_tpl, out=pair.template)

    # ---- tables --------------------------------------------------------------------
    iflux = pair.flux_scale_at(sx, sy) * tflux
    for i, r in enumerate(tr_rows):
        if star_of_tr[i] >= 0:
            iflux[star_of_tr[i]] += r["flux"]
    pair.stars = Table(
        {
            "id": np.arange(sx.size),
            "x": sx, "y": sy,
            "template_x": sx + shift[0], "template_y": sy + shift[1],
            "template_flux": tflux, "image_flux": iflux,
            "flux_scale": pair.flux_scale_at(sx, sy),
            "image_fwhm": ipsf.fwhm_at(sx, sy),
            "template_fwhm": tpsf.fwhm_at(sx + shift[0], sy + shift[1]),
            "saturated": _saturated_near(pair.image_mask, sx, sy),
            "template_saturated": _saturated_near(pair.template_mask, sx + shift[0], sy + shift[1]),
            "variable": tr_of_star >= 0,
            "transient": tr_of_star,
        }
    )
    pair.transients["ideal_snr"] = (
        pair.ideal_snr(pair.transients["flux"], pair.transients["x"], pair.transients["y"])
        if tr_rows else np.zeros(0)
    )
    return pair


def _noisy(rng, model, gain, readnoise):
    """Poisson (electrons) + Gaussian read noise, back in ADU (row blocks: the
    realisation is fixed by the seed and the image shape)."""
    out = np.empty_like(model)
    for r0 in range(0, model.shape[0], _ROWS):
        blk = out[r0:r0 + _ROWS]
        np.maximum(model[r0:r0 + _ROWS], 0.0, out=blk)
        blk *= gain
        blk[:] = rng.poisson(blk)
        if readnoise > 0:
            blk += rng.normal(0.0, readnoise, blk.shape)
        blk /= gain
    return out


def _saturated_near(mask, x, y):
    n = np.size(x)
    if mask is None or n == 0:
        return np.zeros(n, dtype=bool)
    h, w = mask.shape
    ix = np.rint(x).astype(int)
    iy = np.rint(y).astype(int)
    out = np.zeros(n, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            xx = np.clip(ix + dx, 0, w - 1)
            yy = np.clip(iy + dy, 0, h - 1)
            out |= mask[yy, xx]
    return out


def make_demo_pair(seed=1, shape=(512, 512), n_transients=10):
    """The pair shown by ``diffgui --demo``.

    Moffat (beta 3) PSFs, science FWHM 3.5 -> template 2.5 with a 10 % FWHM gradient,
    a 2 % flux-scale gradient, a science sky gradient and ``n_transients`` transients of
    all three kinds with ideal S/N from 8 to 80.

    Parameters
    ----------
    seed : int
        Random seed.
    shape : (int, int)
        Image shape.
    n_transients : int
        Number of transients.

    Returns
    -------
    SimulatedPair
    """
    h, w = shape
    return simulate_pair(
        shape=shape,
        n_stars=int(round(400 * h * w / 512 ** 2)),
        star_flux_range=(10 ** 2.5, 10 ** 5),
        flux_slope=0.5,
        psf="moffat",
        moffat_beta=3.0,
        image_fwhm=3.5,
        template_fwhm=2.5,
        image_fwhm_gradient=0.1,
        template_fwhm_gradient=(0.05, -0.05),
        flux_scale=1.1,
        flux_scale_gradient=0.02,
        sky_gradient={"image": (30.0, 15.0), "template": (0.0, 5.0)},
        transients=n_transients,
        transient_snr_range=(8.0, 80.0),
        seed=seed,
    )


def make_reference_pair(size=1024, seed=0, n_transients=8):
    """The stdpipe peer-measurement pair (stdpipe-reference.md §6) at ``size`` x ``size``.

    Gaussian PSFs 3.5 / 2.5, 1500 stars per 1024**2 with log-uniform template flux
    10**2.5 - 10**4.7, skies 1000 (+20 ADU across x, +10 across y) and 500, gains 2 / 10,
    read noise 10 / 3, flux x1.1, and ``n_transients`` 'new' transients of
    300 - 20000 ADU (log-spaced; 1000 and 5000 ADU included for 8) in star-free spots.
    The quality tables of §6 quote S/N at 1000 and 5000 ADU.
    """
    size = int(size)
    base = simulate_pair(shape=(size, size), sky_gradient=(20.0, 10.0), seed=seed)
    fluxes = np.array([300, 1000, 2000, 5000, 1500, 3000, 10000, 20000], float)
    if n_transients != 8:
        fluxes = np.geomspace(300, 20000, n_transients)
    # Star-free spots on the base pair, then rebuild with the same seed and the
    # explicit transients: the catalogue and noise streams are unchanged.
    r = base._image_psf.radius
    spots = _star_free_spots(np.random.default_rng([seed, 1]), len(fluxes), _star_light_integral(base),
                             math.sqrt(1000 / 2 + 25), max(10, r + 2), 2 * r + 1)
    return simulate_pair(
        shape=(size, size), sky_gradient=(20.0, 10.0), seed=seed,
        transients=[{"x": x, "y": y, "flux": f, "kind": "new"} for (x, y), f in zip(spots, fluxes)],
    )
