"""The simulated pair with its truth (:class:`SimulatedPair`) and the sky and noise
models it is built from."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np
from astropy.table import Table

from diffgui.engine.errors import InputError
from diffgui.engine.simulation.psf_field import _PSFField


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

