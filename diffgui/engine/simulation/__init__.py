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

Modules
-------
psf_field  Gaussian/Moffat stamps (:func:`psf_stamp`) and the field-dependent PSF
pair       :class:`SimulatedPair` (images, noise maps, truth, PSFs, ideal S/N)
generate   :func:`simulate_pair` and its steps
transients the transients: parsing, star-free spots, target S/N, hosts, rendering
presets    :func:`make_demo_pair`, :func:`make_reference_pair`

Imports allowed: numpy/scipy/astropy and :mod:`diffgui.engine.errors`; never a method
package, psf or params (it is the independent truth the methods are measured against).
"""

from diffgui.engine.simulation.generate import simulate_pair
from diffgui.engine.simulation.pair import SimulatedPair
from diffgui.engine.simulation.presets import make_demo_pair, make_reference_pair
from diffgui.engine.simulation.psf_field import FWHM_TO_SIGMA, moffat_alpha, psf_stamp

__all__ = [
    "SimulatedPair",
    "simulate_pair",
    "make_demo_pair",
    "make_reference_pair",
    "psf_stamp",
    "moffat_alpha",
    "FWHM_TO_SIGMA",
]
