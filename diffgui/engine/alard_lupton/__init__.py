"""Native Alard-Lupton image subtraction: the HOTPANTS algorithm in numpy/scipy.

The model is HOTPANTS's (design notes: hotpants.md sections 2-3): the kernel is a
sum of Gaussian x polynomial basis functions (``ng``), whose amplitudes vary
as polynomials of order ``ko`` over each region while the first one (which
alone carries flux) stays constant, plus a differential background of order
``bgo``. What differs from the executable, on purpose:

- pixels are weighted by their inverse variance (image noise plus the
  convolved image's noise through K^2) instead of uniformly;
- non-finite pixels are masked, and a fit without usable stamps raises
  :class:`~diffgui.engine.errors.FitError` instead of writing zeros;
- the image is convolved by FFT with the kernel varying per pixel (HOTPANTS
  re-evaluates it per block of 2r+1 pixels), in tiles on two threads;
- with ``c b`` the direction is chosen by the residual in science units over
  the science variance on the stamps both directions kept.

Everything else follows the executable: stamps on an nsx x nsy grid per
region (up to nss candidate substamps each, peaks above ft sigma, retried at
ft*sft when fewer than nft of the stamps have one), kernel-sum clipping of
single-stamp fits, iterative replacement of stamps whose figure of merit is
above mean + ks sigma, nrx x nry regions buffered as HOTPANTS buffers them, the
output photometric system (-n), fill values and the bad-pixel spreading (-kfm).

:class:`SpatialKernel` is shared with the executable wrapper: it is what
``run_hotpants(get_kernel=True)`` returns for either backend, rebuilt from a
HOTPANTS kernel table or produced by the native fit, and it evaluates the
kernel at any (x, y).

Modules
-------
basis         the Gaussian x polynomial kernel basis (``ng``)
regions       :class:`KernelRegion` and HOTPANTS's region/stamp layout
kernel        :class:`SpatialKernel`: evaluation, whole-image convolution
kernel_table  HOTPANTS kernel tables <-> :class:`SpatialKernel`
convolution   per-region FFT convolution with per-pixel kernel variation
options       HOTPANTS options as the native backend reads them
stamps        images with noise, stamp candidates, per-stamp design matrices
fit           the kernel fit of one region and direction (stamp rejection loop)
apply         applying a fitted kernel: convolved image, difference, noise, mask
subtract      :func:`subtract`, the whole native subtraction, and :class:`NativeResult`

Imports allowed: numpy/scipy/astropy, :mod:`diffgui.engine.errors` and
:mod:`diffgui.engine.common`; never another method package (zogy, sfft, hotpants),
psf, params or simulation. :mod:`diffgui.engine.hotpants` may import the kernel
model (:class:`SpatialKernel`) from here.
"""

from diffgui.engine.alard_lupton.basis import Basis, parse_ng, poly_terms
from diffgui.engine.alard_lupton.kernel import SpatialKernel
from diffgui.engine.alard_lupton.options import NATIVE_IGNORED, NATIVE_UNSUPPORTED
from diffgui.engine.alard_lupton.regions import KernelRegion, hotpants_regions, hotpants_stamp_width
from diffgui.engine.alard_lupton.subtract import NativeResult, subtract

__all__ = [
    "parse_ng",
    "Basis",
    "poly_terms",
    "KernelRegion",
    "SpatialKernel",
    "hotpants_regions",
    "hotpants_stamp_width",
    "NativeResult",
    "subtract",
    "NATIVE_UNSUPPORTED",
    "NATIVE_IGNORED",
]
