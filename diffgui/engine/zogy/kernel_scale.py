"""ZOGY's flux scale from the sum of a free-form matching kernel.

ZOGY's own fit of ``F_r`` (least squares on ``D``) is only as good as the PSF
models: where they miss the stars' cores by a few per cent, the bright cores
pull ``F_r`` by as much, and in a crowded field that error leaves a residual in
proportion to the starlight everywhere (on the pyDIA bulge pairs 1-4 % of F_r,
a median of S_corr of -0.25 to +0.57 over source-free pixels). A kernel ``K``
with ``N = K (*) R + background`` (or ``R = K (*) N``, whichever image is sharper
being convolved) fitted pixel by pixel matches the PSF shapes whatever they
are, and flux conservation makes ``1 / sum(K)`` (or ``sum(K)``) the flux ratio
``F_r`` without reference to any PSF model.
"""

from __future__ import annotations

import numpy as np

from diffgui.engine.common.blas import single_thread_blas
from diffgui.engine.errors import FitError

#: Most pixels in the least-squares fit (a fixed, evenly spread subset beyond it).
MAX_PIXELS = 10000


def kernel_half_size(fwhm_n, fwhm_r):
    """Half-size of the matching kernel: wide enough for the larger PSF's core."""
    return int(np.clip(np.ceil(1.2 * max(fwhm_n, fwhm_r)), 3, 10))


def kernel_flux_scale(N, R, bad, err_n, err_r, region=None, half=5, start=1.0, log=None,
                      convolve="template"):
    """``F_r`` (template flux / science flux) from the sum of a fitted matching kernel.

    Least squares of ``N = K (*) R + a + b x + c y`` (``convolve='template'``,
    ``F_r = 1 / sum(K)``) or of ``R = K (*) N + ...`` (``convolve='science'``,
    ``F_r = sum(K)``) over good pixels (within ``region`` when given), weighted
    by the inverse variance of the target image and the scaled source image;
    ``K`` is a free ``(2 half + 1)**2`` pixel kernel. Convolve the image with
    the sharper PSF: the other way the kernel would have to deconvolve.

    Parameters
    ----------
    N, R : ndarray
        Background-subtracted science and template.
    bad : ndarray of bool
        Bad pixels of either image.
    err_n, err_r : ndarray
        Noise (sigma) maps.
    region : ndarray of bool, optional
        Pixels to fit (e.g. around stars); all good pixels when None or too few.
    half : int
        Kernel half-size.
    start : float
        Approximate ``F_r`` (only for the weights).
    log : callable, optional
    convolve : {'template', 'science'}
        The image the kernel is applied to.

    Returns
    -------
    float or None
        None when there are too few good pixels (fewer than 4 per unknown).

    Raises
    ------
    FitError
        A singular system or a kernel with a non-positive sum.
    """
    if convolve == "template":
        ksum = _kernel_sum(N, R, bad, np.hypot(err_n, err_r / start), region, half, log)
    elif convolve == "science":
        ksum = _kernel_sum(R, N, bad, np.hypot(err_r, err_n * start), region, half, log)
    else:
        raise ValueError(f"convolve must be 'template' or 'science', got {convolve!r}")
    if ksum is None:
        return None
    fr = 1.0 / ksum if convolve == "template" else ksum
    if log is not None:
        log(f"ZOGY: flux scale F_r={fr:.4f} from a {2 * half + 1}x{2 * half + 1} matching kernel "
            f"on the {convolve}")
    return fr


def _signal_region(S, err, half):
    """Pixels within ``half`` of where the 3 x 3 sum of ``S`` has S/N above 5: in a
    sparse field most pixels are sky and carry nothing about the kernel."""
    from scipy import ndimage

    snr = ndimage.uniform_filter(S, 3) * 3.0 / np.maximum(err, np.finfo(float).tiny)
    sig = snr > 5.0
    return ndimage.binary_dilation(sig, iterations=half) if sig.any() else sig


def _kernel_sum(T, S, bad, err, region, half, log):
    """Sum of ``K`` in ``T = K (*) S + a + b x + c y`` (None: too few pixels)."""
    from scipy import ndimage

    h, w = T.shape
    m = half + 1
    use = ~ndimage.binary_dilation(bad, iterations=half + 1) if bad.any() else np.ones((h, w), bool)
    edge = np.zeros((h, w), bool)
    edge[m:h - m, m:w - m] = True
    use &= edge
    nk = (2 * half + 1) ** 2
    Sz = np.where(bad, 0.0, S)
    if region is None or np.count_nonzero(use & region) < 20 * nk:
        region = _signal_region(Sz, err, half)
    if np.count_nonzero(use & region) >= 20 * nk:
        use &= region
    yy, xx = np.nonzero(use)
    if yy.size < 4 * nk:
        if log is not None:
            log(f"ZOGY: too few good pixels ({yy.size}) for a {2 * half + 1}x{2 * half + 1} "
                "matching kernel: F_r from ZOGY's own fit")
        return None
    if yy.size > MAX_PIXELS:
        pick = np.linspace(0, yy.size - 1, MAX_PIXELS).round().astype(int)
        yy, xx = yy[pick], xx[pick]
    wt = 1.0 / err[yy, xx]
    # The design matrix is built transposed (one contiguous row per kernel pixel):
    # filling and multiplying it that way is several times faster than column
    # writes into an (npix, nk) array.
    At = np.empty((nk + 3, yy.size))
    flat = Sz.ravel()
    base = yy * w + xx
    k = 0
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            flat.take(base - (dy * w + dx), out=At[k])
            k += 1
    At[nk] = 1.0
    At[nk + 1] = (xx - 0.5 * w) / w
    At[nk + 2] = (yy - 0.5 * h) / h
    At *= wt
    # Normal equations (a few times faster than an SVD of A); columns scaled to unit
    # norm for the conditioning.
    b = T[yy, xx] * wt
    norm = np.sqrt(np.einsum("ij,ij->i", At, At))
    norm[norm == 0] = 1.0
    At /= norm[:, None]
    try:
        with single_thread_blas():     # spinning BLAS threads cost more than they save here
            sol = np.linalg.solve(At @ At.T, At @ b) / norm
    except np.linalg.LinAlgError:
        raise FitError("the matching kernel cannot be fitted (singular system): pass scale=.") from None
    ksum = float(sol[:nk].sum())
    if not np.isfinite(ksum) or ksum <= 0:
        raise FitError(f"the matching kernel has a non-positive sum ({ksum:.3g}): pass scale=.")
    return ksum
