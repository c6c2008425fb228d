"""PSF models: the PSFEx-layout dict, stamps at any position, and estimation from stars.

Modules
-------
model        the PSF dict (PSFEx layout, described there), validation (:func:`as_psf`),
             evaluation and image-pixel stamps (:func:`get_psf_stamp`), FWHM measurement
psfex_files  PSFEx ``.psf`` files: :func:`load_psfex`, :func:`write_psfex`
estimation   :func:`estimate_psf`: detection, star selection, then the stack
stacking     the iterative effective-PSF stack (binning, per-bin fit, star refits, clipping)
grid         model-grid helpers: interpolation with gradients, stamp shifts, normalisation
denoise      wing denoising of a stacked model (radial profile + significant residuals)

Imports allowed: numpy/scipy/astropy, :mod:`diffgui.engine.errors` and
:mod:`diffgui.engine.common`; never a method package (zogy, sfft, alard_lupton,
hotpants), params or simulation.
"""

from diffgui.engine.psf.estimation import ESTIMATE_OPTIONS, IGNORED_PSFEX_OPTIONS, estimate_psf
from diffgui.engine.psf.model import (PSF_KEYS, as_psf, evaluate_model, get_psf_stamp, make_psf,
                                      measure_fwhm, ncoeffs_for_degree, poly_terms,
                                      psf_from_array, stamp_size)
from diffgui.engine.psf.psfex_files import load_psfex, write_psfex

__all__ = [
    "PSF_KEYS",
    "ncoeffs_for_degree",
    "poly_terms",
    "make_psf",
    "psf_from_array",
    "as_psf",
    "load_psfex",
    "write_psfex",
    "evaluate_model",
    "get_psf_stamp",
    "stamp_size",
    "measure_fwhm",
    "estimate_psf",
    "ESTIMATE_OPTIONS",
]
