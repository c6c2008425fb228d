"""ZOGY proper image subtraction (Zackay, Ofek & Gal-Yam 2016) and run_zogy's body.

Modules
-------
core               :func:`zogy_subtract` on one image/tile (the equations, in
                   :mod:`.core`'s docstring), :class:`ZogyResult`, PSF stamp checks,
                   :func:`subpixel_peak`
fit                the flux-scale / sub-pixel shift fit (errors-in-variables least squares)
fourier            rfft weights, shift phases, padding, gradients, small-grid kernels
noise_correlation  correlated pixel noise: :func:`estimate_noise_correlation`, whitening
bad_pixels         sparse bad pixels filled from their neighbours, their noise, pixels kept
                   out of the scale/shift fit
cosmics            pixels sharper than the PSF (cosmic rays, hot pixels) treated as bad
kernel_scale       the flux scale from the sum of a free-form matching kernel
run                :func:`run`, the body of :func:`diffgui.engine.api.run_zogy`: noise
                   maps, PSFs (:mod:`diffgui.engine.psf`), catalogue scale, tiles

Imports allowed: numpy/scipy/astropy, :mod:`diffgui.engine.errors`,
:mod:`diffgui.engine.common` and :mod:`diffgui.engine.psf`; never another method
package (sfft, alard_lupton, hotpants).
"""

from diffgui.engine.zogy.core import ZogyResult, fit_margin, prepare_psf, subpixel_peak, zogy_subtract
from diffgui.engine.zogy.noise_correlation import estimate_noise_correlation, prepare_corr
from diffgui.engine.zogy.run import ZOGY_OPTIONS, catalogue_scale, run

__all__ = ["ZogyResult", "zogy_subtract", "estimate_noise_correlation", "prepare_psf", "prepare_corr",
           "subpixel_peak", "fit_margin", "catalogue_scale", "run", "ZOGY_OPTIONS"]
