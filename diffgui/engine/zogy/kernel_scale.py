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

The pixel kernel is small (a few FWHM), but the broader image's PSF has wings
beyond it: the light a truncated kernel cannot move into them is fitted as
background, and ``sum(K)`` misses it: 1-3 % on simulated Moffat (beta 2.5-3.5)
pairs with FWHM 3 and 4.5, 0.8 % on pyDIA 0130_vs_0178 (FWHM 4.35 / 5.31: F_r
1.377 instead of 1.386, S_corr median +0.14 over source-free pixels). The kernel
therefore has radial wings out to ``wing_radius``: square rings 2 pixels wide
around the pixel kernel, one free amplitude each (cheap: box sums of an integral
image), whose flux joins the sum. The price is noise: the wing flux is measured
on the sky around the stars, and F_r scatters by 0.1-0.4 % with the pixel sample
(0.1 % without wings), hence the larger sample.

Variable stars and transients break ``N = K (*) R``; pixels with residuals above
8 robust sigmas and their neighbourhood are left out and the fit repeated.
"""

from __future__ import annotations

import numpy as np

from diffgui.engine.common.blas import single_thread_blas
from diffgui.engine.errors import FitError

#: Most pixels in the least-squares fit (a fixed, evenly spread subset beyond it).
MAX_PIXELS = 40000
#: Width (pixels) of the square rings of the kernel's wings.
RING_WIDTH = 2


def kernel_half_size(fwhm_n, fwhm_r):
    """Half-size of the matching kernel: wide enough for the larger PSF's core."""
    return int(np.clip(np.ceil(1.2 * max(fwhm_n, fwhm_r)), 3, 10))


def wing_radius(fwhm_n, fwhm_r, half):
    """Outer (Chebyshev) radius of the kernel's wing rings: 5 FWHM of the broader
    PSF, at most 32 pixels; 0 (no wings) when that is not beyond ``half + 1``."""
    rw = int(min(np.ceil(5.0 * max(fwhm_n, fwhm_r)), 32))
    return rw if rw >= half + RING_WIDTH else 0


def kernel_flux_scale(N, R, bad, err_n, err_r, region=None, half=5, start=1.0, log=None,
                      convolve="template", wing=0):
    """``F_r`` (template flux / science flux) from the sum of a fitted matching kernel.

    Least squares of ``N = K (*) R + a + b x + c y`` (``convolve='template'``,
    ``F_r = 1 / sum(K)``) or of ``R = K (*) N + ...`` (``convolve='science'``,
    ``F_r = sum(K)``) over good pixels (within ``region`` when given), weighted
    by the inverse variance of the target image and the scaled source image;
    ``K`` is a free ``(2 half + 1)**2`` pixel kernel, with square rings out to
    ``wing`` (one amplitude per ring) for the wings of the broader PSF.
    Convolve the image with the sharper PSF: the other way the kernel would
    have to deconvolve.

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
    wing : int
        Outer radius of the wing rings (:func:`wing_radius`); 0: none. Pixels
        whose rings would leave the image or hold bad pixels are not fitted;
        when too few remain, the kernel has no wings.

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
        ksum = _kernel_sum(N, R, bad, np.hypot(err_n, err_r / start), region, half, log, wing)
    elif convolve == "science":
        ksum = _kernel_sum(R, N, bad, np.hypot(err_r, err_n * start), region, half, log, wing)
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


def _box_sums(cum, yy, xx, r):
    """Sums over the ``(2 r + 1)**2`` boxes centred on ``(yy, xx)`` from the integral image."""
    return (cum[yy + r + 1, xx + r + 1] - cum[yy - r, xx + r + 1]
            - cum[yy + r + 1, xx - r] + cum[yy - r, xx - r])


def _integral(a):
    cum = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    np.cumsum(a, axis=0, out=cum[1:, 1:])
    np.cumsum(cum[1:, 1:], axis=1, out=cum[1:, 1:])
    return cum


def _fit_pixels(bad, region, Sz, err, half, rw, nk, need=4):
    """Rows and columns of the pixels to fit (None: fewer than ``need`` per
    unknown). With wings (``rw``), pixels within ``rw`` of the edge or with bad
    pixels in their rings (beyond one per 500) are left out."""
    from scipy import ndimage

    h, w = bad.shape
    m = max(half, rw) + 1
    use = ~ndimage.binary_dilation(bad, iterations=half + 1) if bad.any() else np.ones((h, w), bool)
    edge = np.zeros((h, w), bool)
    edge[m:h - m, m:w - m] = True
    use &= edge
    if rw and bad.any():
        # a zeroed sky pixel costs the rings nothing, a masked star core its flux
        use &= ndimage.uniform_filter(bad.astype(np.float32), 2 * rw + 1) <= 0.002
    if region is None or np.count_nonzero(use & region) < 20 * nk:
        region = _signal_region(Sz, err, half)
    if np.count_nonzero(use & region) >= 20 * nk:
        use &= region
    yy, xx = np.nonzero(use)
    if yy.size < need * nk:
        return None
    if yy.size > MAX_PIXELS:
        pick = np.linspace(0, yy.size - 1, MAX_PIXELS).round().astype(int)
        yy, xx = yy[pick], xx[pick]
    return yy, xx


def _ring_edges(half, wing):
    """Chebyshev radii of the wing rings: ``half``, ``half + RING_WIDTH``, ... up to ``wing``."""
    return list(range(half, wing + 1, RING_WIDTH)) if wing else []


def _kernel_sum(T, S, bad, err, region, half, log, wing=0):
    """Sum of ``K`` in ``T = K (*) S + a + b x + c y`` (None: too few pixels)."""
    nk = (2 * half + 1) ** 2
    Sz = np.where(bad, 0.0, S)
    edges = _ring_edges(half, wing)
    pix = None
    if len(edges) > 1:
        # the wings need the sky around many stars: more pixels than the kernel alone
        pix = _fit_pixels(bad, region, Sz, err, half, edges[-1], nk + len(edges) + 2, need=20)
        if pix is None:
            edges = []
            if log is not None:
                log("ZOGY: too few pixels for the matching kernel's wings: kernel without wings")
    if pix is None:
        pix = _fit_pixels(bad, region, Sz, err, half, 0, nk)
    if pix is None:
        if log is not None:
            log(f"ZOGY: too few good pixels for a {2 * half + 1}x{2 * half + 1} "
                "matching kernel: F_r from ZOGY's own fit")
        return None
    yy, xx = pix
    At, area = _design(Sz, yy, xx, half, edges)
    wt = 1.0 / err[yy, xx]
    At *= wt
    # Normal equations (a few times faster than an SVD of A); columns scaled to unit
    # norm for the conditioning.
    b = T[yy, xx] * wt
    norm = np.sqrt(np.einsum("ij,ij->i", At, At))
    norm[norm == 0] = 1.0
    At /= norm[:, None]
    sol = _robust_solve(At, b, yy, xx, T.shape, half, log) / norm
    ksum = float(sol[:nk].sum()) + (float(sol[-area.size:] @ area) if area.size else 0.0)
    if not np.isfinite(ksum) or ksum <= 0:
        raise FitError(f"the matching kernel has a non-positive sum ({ksum:.3g}): pass scale=.")
    return ksum


def _design(Sz, yy, xx, half, edges):
    """Transposed design matrix (kernel pixels, 1, x, y, wing rings) at ``(yy, xx)``
    and the area of each ring."""
    h, w = Sz.shape
    nk = (2 * half + 1) ** 2
    nr = max(len(edges) - 1, 0)
    # Built transposed (one contiguous row per kernel pixel): filling and multiplying
    # it that way is several times faster than column writes into an (npix, nk) array.
    nb = 3
    At = np.empty((nk + nb + nr, yy.size))
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
    area = np.zeros(nr)
    if nr:
        cum = _integral(Sz)
        inner = _box_sums(cum, yy, xx, edges[0])
        for i in range(nr):
            outer = _box_sums(cum, yy, xx, edges[i + 1])
            np.subtract(outer, inner, out=At[nk + nb + i])
            area[i] = (2 * edges[i + 1] + 1) ** 2 - (2 * edges[i] + 1) ** 2
            inner = outer
    return At, area


def _robust_solve(At, b, yy, xx, shape, half, log, clip=8.0, max_iter=3):
    """Least squares ``At.T x = b`` without the pixels of sources that changed:
    pixels whose residual exceeds ``clip`` robust sigmas are dropped together with
    the sampled pixels within ``half`` (Chebyshev distance) of them (a variable star's footprint), and
    the fit repeated. Variable stars and transients otherwise pull the kernel sum
    (1.3 % on a simulated pair with 8 variables and 12 transients in 375 stars)."""
    from scipy import ndimage

    with single_thread_blas():     # spinning BLAS threads cost more than they save here
        M = At @ At.T
        v = At @ b
        keep = np.ones(b.size, bool)
        for it in range(max_iter + 1):
            try:
                sol = np.linalg.solve(M, v)
            except np.linalg.LinAlgError:
                raise FitError("the matching kernel cannot be fitted (singular system): "
                               "pass scale=.") from None
            z = np.abs(b - sol @ At)
            sig = 1.4826 * float(np.median(z[keep]))
            out = keep & (z > clip * sig)
            if not out.any() or it == max_iter:
                break
            hit = np.zeros(shape, bool)
            hit[yy[out], xx[out]] = True
            drop = keep & ndimage.maximum_filter(hit, 2 * half + 1)[yy, xx]
            if keep.sum() - drop.sum() < 2 * M.shape[0]:
                break
            M -= At[:, drop] @ At[:, drop].T
            v -= At[:, drop] @ b[drop]
            keep &= ~drop
    if log is not None and not keep.all():
        log(f"ZOGY: matching kernel: {int((~keep).sum())} of {keep.size} pixels near changed "
            "sources left out")
    return sol
