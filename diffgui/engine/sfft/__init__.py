"""SFFT image subtraction: a spatially varying delta-function kernel fitted by least
squares with FFT-assembled normal equations (Hu et al. 2022).

Modules
-------
solver    :func:`solve`: setup, assembly choice, the fit passes (template-noise
          reweighting, S/N-binned clipping) and the result; the model and fit are
          described in its docstring
result    :class:`SFFTResult` and stdpipe's module-level evaluation helpers
basis     polynomial terms, kernel offsets, coordinate normalisation
assembly  the normal equations by FFT correlations (strips), FFT convolutions
design_rows  :class:`DesignRows`: exact per-pixel additions to the normal equations
linalg    the penalised, equilibrated Cholesky solve; the pixel-updated system
pixels    pixel sets, robust scales, clipping candidates, convolved template variance
outputs   run_sfft's outputs: convolved variance, object regions, decorrelation

Imports allowed: numpy/scipy, :mod:`diffgui.engine.errors` and
:mod:`diffgui.engine.common`; never another method package (zogy, alard_lupton,
hotpants), psf, params or simulation.
"""

from diffgui.engine.sfft.outputs import (
    convolved_variance,
    decorrelate_difference,
    decorrelation_kernel,
    object_regions,
)
from diffgui.engine.sfft.result import (SFFTResult, evaluate_background, evaluate_flux_scale,
                                        evaluate_kernel_at)
from diffgui.engine.sfft.solver import solve

__all__ = [
    "SFFTResult",
    "solve",
    "convolved_variance",
    "object_regions",
    "decorrelation_kernel",
    "decorrelate_difference",  # the last four: from sfft.outputs
    "evaluate_kernel_at",
    "evaluate_flux_scale",
    "evaluate_background",
]
