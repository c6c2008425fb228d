"""SFFT image subtraction: a spatially varying delta-function kernel fitted by
least squares, with the normal equations assembled by FFTs.

Model (Hu et al. 2022, ApJ 936, 157; stdpipe's ``sfft.solve`` layout)::

    S(p) = sum_a a_a(p) R(p - d_a) + B(p)
    a_a(p) = sum_b c_ab P_b(x~, y~)        kernel pixels, polynomials of kernel_poly_order
    B(p)   = sum_g d_g Q_g(x~, y~)         differential background, bg_poly_order

``d_a`` runs over the kernel pixels row-major (dy outer); the polynomial terms
are 1, y, x, y^2, xy, x^2, ... of normalised coordinates in [-1, 1]; the
coefficient vector is kernel index major, polynomial term minor, then the
background terms (stdpipe 0.4.1 layout). ``R`` is shifted with zero fill.

Fit
---
- Weighted least squares with inverse-variance weights (``err``; uniform
  without it). When ``template_err`` is given, the first fit only yields a
  kernel through which the template noise is propagated; the weights become
  ``1 / (err^2 + var_conv)`` and the system is solved again (one extra pass).
- Sigma clipping (``sigma_clip``, at most ``max_iter`` fits): pixels whose
  normalised residual exceeds ``sigma_clip`` times the robust scale of pixels
  of similar model S/N are removed for good. A single global scale flags the
  cores of bright stars, whose residuals carry PSF-model errors; removing them
  runs away (measured: on the DECam stacks the flux scale drifted by 12 % and
  5 % of the bright star's flux was left; on JWST the bright star's peak
  residual grew 2.6x). Cosmic rays, transients and bad
  pixels still stand out within their S/N bin. Clipping stops when nothing is
  left to clip or when the predicted model change is below half the model's
  own statistical uncertainty.
- The kernel sum (flux scale) is tied to a polynomial of ``flux_poly_order``:
  for every kernel term of higher degree the sum over the kernel pixels is
  pushed to zero with weight ``flux_penalty * h``; ``ridge * h`` is added to
  the kernel diagonal only (``h`` is the median kernel diagonal). The
  background terms are never penalised: stdpipe's ridge also damped them, so
  an unequal sky pedestal leaked into the kernel sum (its flux scale came out
  1000/500 = 2 instead of 1.1). The template's median level is also taken
  out before the fit (an exact reparametrisation when bg_poly_order >=
  kernel_poly_order), which keeps the system well conditioned and makes the
  ridge relative to the image structure, not to the sky level.
- Excluded from the fit: masked science pixels, template defects grown by the
  kernel footprint, and the band of half-kernel width along the edges. The
  last two form ``dmask``.

Speed
-----
With uniform weights the normal equations are correlations that FFTs give for
all kernel offsets at once (:mod:`sfft_assembly`): seven FFTs per image strip
(the monomial-weighted template and the science image), spectrum products and
a partial inverse DFT at the few lags needed, all in float64. Pixels whose
weight differs from the uniform one (edge band, masked and clipped pixels,
pixels whose inverse variance departs from the median by more than
``WEIGHT_TOL``) are added or removed exactly with dense design rows; pixels
within ``WEIGHT_TOL`` of the median weight use the median (a negligible loss of
statistical efficiency, and still an exact least-squares fit with those
weights). Clipping downdates the system instead of re-assembling it, and each
clipping pass evaluates the model with one inverse FFT per strip from the
stored template spectra. When few pixels are used (fit restricted to object
boxes) the system is assembled directly from them (``method='direct'``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import linalg as _linalg
from scipy import ndimage

from diffgui.engine.errors import FitError, InputError, check_cancel, make_logger, validate_pair
from diffgui.engine.sfft.assembly import DesignRows, add_poly_map, base_normal_equations, poly_conv_sum, poly_map
from diffgui.engine.sfft.outputs import (  # noqa: F401  (public names of this module)
    convolved_variance,
    decorrelate_difference,
    decorrelation_kernel,
    object_regions,
)
from diffgui.engine.sfft.basis import (
    kernel_offsets,
    norm_params,
    normalise,
    poly_exponents,
    poly_values,
    shift_expansion,
)

__all__ = [
    "SFFTResult",
    "solve",
    "convolved_variance",
    "object_regions",
    "decorrelation_kernel",
    "decorrelate_difference",  # the last four: from sfft_outputs
    "evaluate_kernel_at",
    "evaluate_flux_scale",
    "evaluate_background",
]

#: Pixels whose inverse variance is within this fraction of the median weight use the median.
WEIGHT_TOL = 0.2
#: At most this fraction of the fitted pixels gets an individual weight (the most deviant ones).
DEV_MAX_FRACTION = 0.15
#: Clipping stops once the predicted RMS model change is below this fraction of the noise
#: (or below half the model's statistical uncertainty, whichever is larger).
CONVERGENCE_TOL = 1e-3
#: Model S/N bin edges for the clipping scale (see _clip_candidates) and the
#: fewest pixels a bin needs for its own scale.
CLIP_SNR_BINS = [3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]
CLIP_MIN_BIN = 50
#: Smallest reciprocal condition number of the equilibrated system accepted.
RCOND_MIN = 1e-13


@dataclass
class SFFTResult:
    """Fitted SFFT kernel, background and fit metadata.

    Attributes
    ----------
    kernel_coeffs : ndarray (ky*kx, n_kpoly)
        Polynomial coefficients of every kernel pixel (row-major offsets).
    bg_coeffs : ndarray (n_bg,)
        Background polynomial coefficients.
    flux_poly_coeffs : ndarray
        Kernel sum (flux scale) polynomial coefficients of the terms of degree
        <= flux_poly_order (higher ones are ~0 through the penalty).
    kernel_shape, kernel_poly_order, bg_poly_order, flux_poly_order, image_shape
        The model.
    n_iter : int
        Number of solves (the first fit, the reweighting pass, the clipping passes).
    n_good : int
        Pixels used in the final fit.
    n_clipped : int
        Pixels removed by sigma clipping.
    chi2 : float
        Weighted sum of squared residuals over the fitted pixels.
    rms : float
        Plain RMS of the residuals over the fitted pixels.
    time : float
        Wall time of the fit, seconds.
    mode : str
        'fft' (FFT assembly with exact corrections) or 'direct'.
    rcond : float
        Reciprocal condition number of the (equilibrated) final system.
    dmask : ndarray of bool
        Pixels excluded because of the edge band or grown template defects.
    fit_mask : ndarray of bool
        Pixels used in the final fit (True = used).
    diff, convolved : ndarray or None
        Difference ``image - model`` and the convolved template ``K * R``.
    """

    kernel_coeffs: np.ndarray
    bg_coeffs: np.ndarray
    flux_poly_coeffs: np.ndarray
    kernel_shape: tuple
    kernel_poly_order: int
    bg_poly_order: int
    flux_poly_order: int
    image_shape: tuple
    n_iter: int = 0
    n_good: int = 0
    n_clipped: int = 0
    chi2: float = float("nan")
    rms: float = float("nan")
    time: float = 0.0
    mode: str = "fft"
    rcond: float = float("nan")
    dmask: Optional[np.ndarray] = field(default=None, repr=False)
    fit_mask: Optional[np.ndarray] = field(default=None, repr=False)
    diff: Optional[np.ndarray] = field(default=None, repr=False)
    convolved: Optional[np.ndarray] = field(default=None, repr=False)
    params: dict = field(default_factory=dict)

    # -- basis helpers -------------------------------------------------------------
    @property
    def kernel_exponents(self):
        return poly_exponents(self.kernel_poly_order)

    @property
    def bg_exponents(self):
        return poly_exponents(self.bg_poly_order)

    @property
    def kernel_sum_coeffs(self) -> np.ndarray:
        """Coefficients of the exact kernel sum polynomial (all kernel terms)."""
        return self.kernel_coeffs.sum(axis=0)

    def _coords(self, x, y, image_shape):
        ny, nx = self.image_shape if image_shape is None else image_shape
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        x, y = np.broadcast_arrays(x, y)
        return normalise(x.ravel(), nx), normalise(y.ravel(), ny), x.shape

    # -- evaluation --------------------------------------------------------------------
    def evaluate_kernel_at(self, x, y, image_shape=None) -> np.ndarray:
        """The convolution kernel at pixel (x, y), shape ``kernel_shape``.

        ``K[hy + dy, hx + dx]`` multiplies ``R(y - dy, x - dx)``: convolving the
        template with K gives the model (without background) at that position.
        """
        xt, yt, _ = self._coords(float(x), float(y), image_shape)
        P = poly_values(self.kernel_exponents, xt, yt)[0]
        return (self.kernel_coeffs @ P).reshape(self.kernel_shape)

    def kernel_grid(self, nx=5, ny=None):
        """Kernels on a regular ``ny x nx`` grid of cell centres.

        Returns
        -------
        xs, ys : ndarray
            Pixel coordinates of the grid columns and rows.
        kernels : ndarray (ny, nx, ky, kx)
        """
        ny = nx if ny is None else ny
        H, W = self.image_shape
        xs = (np.arange(nx) + 0.5) * W / nx - 0.5
        ys = (np.arange(ny) + 0.5) * H / ny - 0.5
        gx, gy = np.meshgrid(xs, ys)
        P = poly_values(self.kernel_exponents, normalise(gx.ravel(), W), normalise(gy.ravel(), H))
        k = (P @ self.kernel_coeffs.T).reshape((ny, nx) + tuple(self.kernel_shape))
        return xs, ys, k

    def kernel_mosaic(self, nx=5, ny=None, gap=1, fill=np.nan) -> np.ndarray:
        """The kernel grid tiled into one 2-D image for display (``gap`` px between kernels)."""
        _, _, k = self.kernel_grid(nx, ny)
        gy, gx, ky, kx = k.shape
        out = np.full((gy * (ky + gap) - gap, gx * (kx + gap) - gap), fill)
        for i in range(gy):
            for j in range(gx):
                out[i * (ky + gap):i * (ky + gap) + ky, j * (kx + gap):j * (kx + gap) + kx] = k[i, j]
        return out

    def evaluate_flux_scale(self, x, y, image_shape=None):
        """Kernel sum (template-to-science flux scale) at (x, y); scalar or array."""
        xt, yt, shape = self._coords(x, y, image_shape)
        v = poly_values(self.kernel_exponents, xt, yt) @ self.kernel_sum_coeffs
        return float(v[0]) if shape == () else v.reshape(shape)

    def flux_scale_map(self, image_shape=None) -> np.ndarray:
        """Kernel sum at every pixel."""
        return poly_map(self.kernel_sum_coeffs, self.kernel_exponents,
                        self.image_shape if image_shape is None else image_shape)

    def evaluate_background(self, x, y, image_shape=None):
        """Differential background at (x, y); scalar or array."""
        xt, yt, shape = self._coords(x, y, image_shape)
        v = poly_values(self.bg_exponents, xt, yt) @ self.bg_coeffs
        return float(v[0]) if shape == () else v.reshape(shape)

    def background_map(self, image_shape=None) -> np.ndarray:
        """Differential background at every pixel."""
        return poly_map(self.bg_coeffs, self.bg_exponents,
                        self.image_shape if image_shape is None else image_shape)

    @property
    def model(self):
        """Full model ``K * R + B`` (None when the images were not kept)."""
        if self.convolved is None:
            return None
        return self.convolved + self.background_map()

    def summary(self) -> str:
        """One line describing the fit."""
        ny, nx = self.image_shape
        fs = self.evaluate_flux_scale(np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2]),
                                      np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2]))
        return (f"SFFT {self.mode}: {self.n_iter} solves, {self.n_good} px "
                f"({self.n_clipped} clipped), rms {self.rms:.4g}, chi2/px "
                f"{self.chi2 / max(self.n_good, 1):.4g}, flux scale {fs[-1]:.5g} "
                f"[{fs.min():.5g}..{fs.max():.5g}], {self.time:.2f} s")


# ----------------------------------------------------------------------------------------
# parameter checks
def _kernel_shape(kernel_shape, image_shape):
    if np.isscalar(kernel_shape):
        kernel_shape = (kernel_shape, kernel_shape)
    try:
        ks = tuple(int(k) for k in kernel_shape)
    except Exception:
        raise InputError(f"kernel_shape must be two odd integers, got {kernel_shape!r}") from None
    if len(ks) != 2 or any(k != kk for k, kk in zip(ks, kernel_shape)):
        raise InputError(f"kernel_shape must be two odd integers, got {kernel_shape!r}")
    if any(k < 1 or k % 2 == 0 for k in ks):
        raise InputError(f"kernel_shape must be odd (e.g. (7, 7)), got {ks}: an even kernel has no centre pixel.")
    ny, nx = image_shape
    if ks[0] >= ny or ks[1] >= nx:
        raise InputError(f"kernel {ks} is larger than the image {tuple(image_shape)}: "
                         "nothing would remain once the edge band is excluded.")
    return ks


def _order(value, name):
    try:
        v = int(value)
    except Exception:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}") from None
    if v != value or v < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    return v


def _check_params(kernel_poly_order, bg_poly_order, flux_poly_order, flux_penalty, ridge,
                  sigma_clip, max_iter):
    kpo = _order(kernel_poly_order, "kernel_poly_order")
    bpo = _order(bg_poly_order, "bg_poly_order")
    fpo = kpo if flux_poly_order is None else _order(flux_poly_order, "flux_poly_order")
    if fpo > kpo:
        raise InputError(f"flux_poly_order ({fpo}) cannot exceed kernel_poly_order ({kpo}): "
                         "the kernel sum is a polynomial of the kernel's order at most.")
    for name, v in (("flux_penalty", flux_penalty), ("ridge", ridge)):
        if not (np.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
    if sigma_clip is not None and sigma_clip is not False:
        if not (np.isfinite(sigma_clip) and sigma_clip >= 0):
            raise InputError(f"sigma_clip must be > 0 (or None/0 to disable), got {sigma_clip!r}")
    try:
        mi = int(max_iter)
    except Exception:
        raise InputError(f"max_iter must be an integer >= 1, got {max_iter!r}") from None
    if mi != max_iter or mi < 1:
        raise InputError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    return kpo, bpo, fpo, mi


# ----------------------------------------------------------------------------------------
# linear algebra
def _symmetric(upper):
    return np.triu(upper) + np.triu(upper, 1).T


def _penalised(H, nkk, nkp, kexp, fpo, flux_penalty, ridge):
    """Add the ridge (kernel terms only) and the flux-sum penalty."""
    diag = np.diag(H)[:nkk]
    h = float(np.median(diag))
    if not (np.isfinite(h) and h > 0):
        raise FitError("the template has no usable structure (its kernel columns are all zero): "
                       "cannot fit a kernel.")
    Hp = H.copy()
    idx = np.arange(nkk)
    Hp[idx, idx] += ridge * h
    if flux_penalty > 0:
        for b, (i, j) in enumerate(kexp):
            if i + j > fpo:
                sel = np.arange(b, nkk, nkp)
                Hp[np.ix_(sel, sel)] += flux_penalty * h
    return Hp


def _single_thread_blas():
    """One OpenBLAS thread for the small dense solves (see :mod:`.blas`)."""
    from diffgui.engine.common.blas import single_thread_blas
    return single_thread_blas()


def _solve_spd(H, g):
    d = np.sqrt(np.diag(H))
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise FitError("the normal equations are singular: some kernel or background term is "
                       "not constrained by any usable pixel.")
    Hs = H / np.outer(d, d)
    try:
        c, low = _linalg.cho_factor(Hs, lower=False, check_finite=False)
    except _linalg.LinAlgError:
        raise FitError("the normal equations are singular (Cholesky failed): reduce the kernel "
                       "or polynomial orders, or add ridge.") from None
    rcond, info = _linalg.lapack.dpocon(c, np.abs(Hs).sum(axis=0).max())
    if info != 0 or not rcond >= RCOND_MIN:
        raise FitError(f"the normal equations are ill-conditioned (rcond {rcond:.2e}): reduce "
                       "the kernel size or polynomial orders, add ridge, or use more pixels.")
    x = _linalg.cho_solve((c, low), g / d, check_finite=False) / d
    return x, float(rcond)


# ----------------------------------------------------------------------------------------
def _grow(mask, ky, kx):
    if not mask.any():
        return np.zeros_like(mask)
    return ndimage.maximum_filter(mask.view(np.uint8), size=(ky, kx), mode="constant", cval=0) > 0


def _ring(shape, hy, hx):
    """Pixels of the plane grown by (hy, hx) that are not in the fit interior."""
    ny, nx = shape
    ys, xs = [], []
    top = np.arange(-hy, hy)
    bottom = np.arange(ny - hy, ny + hy)
    cols = np.arange(-hx, nx + hx)
    for rows in (top, bottom):
        yy, xx = np.meshgrid(rows, cols, indexing="ij")
        ys.append(yy.ravel())
        xs.append(xx.ravel())
    mid = np.arange(hy, ny - hy)
    side = np.concatenate([np.arange(-hx, hx), np.arange(nx - hx, nx + hx)])
    yy, xx = np.meshgrid(mid, side, indexing="ij")
    ys.append(yy.ravel())
    xs.append(xx.ravel())
    return np.concatenate(ys), np.concatenate(xs)


def _robust_sigma(values, max_n=250_000):
    """1.4826 x median |values| (not centred), from a regular subsample of large arrays."""
    if values.size == 0:
        return float("nan")
    if values.size > max_n:
        values = values[:: values.size // max_n + 1]
    return 1.4826 * float(np.median(np.abs(values)))


def _clip_candidates(rn, snr, good, sigma_clip):
    """Pixels to clip: normalised residual above ``sigma_clip`` times the robust
    scale of pixels of similar model S/N.

    A global scale would flag the cores of bright stars, whose residuals carry
    PSF-model errors on top of the noise, and clipping them runs away (each pass
    fits the cores worse). Outliers (cosmic rays, transients, bad pixels) stand
    out within their S/N bin and are still clipped. The scale never decreases
    with S/N.

    Returns
    -------
    cy, cx : ndarray or None
        Pixels to clip (None: clipping impossible, zero scale).
    sigma : float
        Scale of the faintest bin (the noise-dominated pixels).
    note : str
        Description of the brighter bins' scales for the log.
    """
    sig0 = _robust_sigma(_subsample(rn, good))
    if not sig0 > 0:
        return None, None, sig0, ""
    ra = np.abs(rn)
    cy, cx = np.nonzero(ra > sigma_clip * sig0)
    if cy.size == 0:
        return cy, cx, sig0, ""
    # Bin by S/N in units of the noise scale: ``snr`` is in the units of ``rn``,
    # which are sigma only when the weights are inverse variances (with uniform
    # weights every pixel fell in the faint bin and star cores were clipped).
    edges = np.asarray(CLIP_SNR_BINS) * sig0
    bright = good & (snr >= edges[0])
    rb, sb = ra[bright], snr[bright]
    scales = [sig0]
    frac = 0.0
    for lo, hi in zip(edges, list(edges[1:]) + [np.inf]):
        sel = (sb >= lo) & (sb < hi)
        if np.count_nonzero(sel) >= CLIP_MIN_BIN:
            est = _robust_sigma(rb[sel])
            # Fractional model error implied by this bin's excess scatter.
            frac = max(frac, np.sqrt(max(est * est - sig0 * sig0, 0.0)) / float(np.median(sb[sel])))
        else:
            est = 0.0
        scales.append(max(scales[-1], est))
    scales = np.array(scales)
    sc = snr[cy, cx]
    scale = np.maximum(scales[np.searchsorted(edges, sc, side="right")],
                       np.sqrt(sig0 * sig0 + (frac * sc) ** 2))
    keep = ra[cy, cx] > sigma_clip * scale
    note = ""
    if frac > 0:
        note = f", model error {100 * frac:.2g} % of the source signal"
    return cy[keep], cx[keep], sig0, note


def _unit_offsets(kernel_shape, shape):
    """Kernel offsets in normalised coordinate units (ux, uy)."""
    dy, dx = kernel_offsets(kernel_shape)
    return dx / norm_params(shape[1])[1], dy / norm_params(shape[0])[1]


def _subsample(values, good, max_n=250_000):
    """Values at the good pixels, from a regular subsample of large images."""
    step = max(1, good.size // max_n)
    if step == 1:
        return values[good]
    v, g = values.ravel()[::step], good.ravel()[::step]
    return v[g]


def _sample_median(values, max_n=250_000):
    if values.size > max_n:
        values = values[:: values.size // max_n + 1]
    return float(np.median(values))


def _kernels_by_term(theta_k, kernel_shape):
    """Per polynomial term, the kernel image of its coefficients."""
    return [theta_k[:, b].reshape(kernel_shape) for b in range(theta_k.shape[1])]


def _approx_convolved_variance(theta_k, kernel_shape, kexp, template_var, cancel=None):
    """Cheap version for the weights: the centre kernel, scaled by the local kernel sum."""
    k0 = theta_k[:, 0].reshape(kernel_shape)
    out = poly_conv_sum(template_var, [k0 * k0], [(0, 0)], cancel=cancel, single=True)
    s = theta_k.sum(axis=0)
    if abs(s[0]) > 0 and len(s) > 1:
        out *= np.square(poly_map(s / s[0], kexp, template_var.shape))
    np.maximum(out, 0.0, out=out)
    return out


# ----------------------------------------------------------------------------------------
class _System:
    """Normal equations kept as ``w0 (Hb - Hz) + Hd`` so that pixels can be
    removed or reweighted exactly without re-assembling the FFT part.

    ``Hb``: unit-weight FFT sums over the padded plane (None in direct mode);
    ``Hz``: unit sums of the pixels that left the fit (outer ring, edge band,
    masked, clipped); ``Hd``: ``(w - w0) phi phi^T`` summed over the pixels
    with an individual weight (all fitted pixels in direct mode, where w0 = 0).
    Only upper triangles are accumulated.
    """

    def __init__(self, rows: DesignRows, Hb=None, gb=None):
        n = rows.n
        self.rows = rows
        self.Hb, self.gb = Hb, gb
        self.Hz, self.gz = np.zeros((n, n)), np.zeros(n)
        self.Hd, self.gd = np.zeros((n, n)), np.zeros(n)
        self.w0 = 0.0

    def remove_from_base(self, yy, xx):
        if yy.size and self.Hb is not None:
            self.rows.accumulate([(self.Hz, self.gz, 1.0)], yy, xx)

    def set_individual(self, yy, xx, w, w0):
        """Replace the individual part by pixels ``(yy, xx)`` with weights ``w``."""
        self.w0 = w0
        self.Hd[...] = 0.0
        self.gd[...] = 0.0
        if yy.size:
            self.rows.accumulate([(self.Hd, self.gd, w - w0)], yy, xx)

    def clip(self, yy, xx, w, individual):
        """Give pixels weight 0: out of the base sum, and out of the individual part
        where they had an individual weight (one design-matrix pass)."""
        if not yy.size:
            return
        c = np.where(individual, -(w - self.w0), 0.0)
        targets = [(self.Hd, self.gd, c)]
        if self.Hb is not None:
            targets.append((self.Hz, self.gz, np.where(individual, 1.0, 1.0)))
        self.rows.accumulate(targets, yy, xx)

    def matrix(self):
        if self.Hb is None:
            return _symmetric(self.Hd), self.gd.copy()
        H = self.w0 * (np.triu(self.Hb) - self.Hz) + self.Hd
        return _symmetric(H), self.w0 * (self.gb - self.gz) + self.gd


def solve(image, template, mask=None, template_mask=None, err=None, template_err=None,
          kernel_shape=(7, 7), kernel_poly_order=2, bg_poly_order=2, flux_poly_order=1,
          flux_penalty=1000.0, ridge=1e-06, sigma_clip=3.0, max_iter=5, verbose=False, *,
          cancel=None, method="auto", keep_images=True) -> SFFTResult:
    """Fit ``image`` as ``template`` convolved with a spatially varying kernel plus a background.

    Parameters
    ----------
    image, template : ndarray
        Science and template images on the same pixel grid.
    mask : ndarray of bool, optional
        Science pixels to exclude from the fit (True = bad); non-finite
        pixels are always excluded.
    template_mask : ndarray of bool, optional
        Template defects; grown by the kernel footprint (every pixel whose
        model reads a defect is excluded).
    err, template_err : ndarray, optional
        Noise (sigma) maps. ``err`` gives the weights 1/err^2 (uniform
        weights without it); ``template_err`` adds one reweighting pass with
        the template noise propagated through the fitted kernel.
    kernel_shape : tuple of int
        Odd kernel size (ky, kx).
    kernel_poly_order, bg_poly_order, flux_poly_order : int
        Polynomial orders of the kernel variation, the background and the
        kernel sum (flux scale), flux_poly_order <= kernel_poly_order.
    flux_penalty : float
        Weight of the kernel-sum constraint, relative to the median kernel diagonal.
    ridge : float
        Tikhonov regularisation of the kernel terms (not the background),
        relative to the median kernel diagonal.
    sigma_clip : float or None
        Clipping threshold on the normalised residuals; None/0 disables clipping.
    max_iter : int
        Maximum number of fits (>= 1; the reweighting pass is extra).
    verbose : bool or callable
        Progress messages.
    cancel : callable, optional
        Polled between stages; returning True raises :class:`Cancelled`.
    method : {'auto', 'fft', 'direct'}
        Assembly of the normal equations: FFT correlations with exact
        corrections, or dense rows of the used pixels only. 'auto' picks the
        cheaper one.
    keep_images : bool
        Store ``diff`` and ``convolved`` in the result.

    Returns
    -------
    SFFTResult

    Raises
    ------
    InputError
        Bad shapes or parameters, no usable pixels.
    FitError
        Too few pixels for the number of parameters, singular or
        ill-conditioned normal equations.
    """
    # BLAS work here is small or cache-blocked; OpenBLAS threads only spin on a
    # busy machine (2x slower measured), FFTW keeps its own threads.
    with _single_thread_blas():
        return _solve(image, template, mask, template_mask, err, template_err, kernel_shape,
                      kernel_poly_order, bg_poly_order, flux_poly_order, flux_penalty, ridge,
                      sigma_clip, max_iter, verbose, cancel, method, keep_images)


def _solve(image, template, mask, template_mask, err, template_err, kernel_shape,
           kernel_poly_order, bg_poly_order, flux_poly_order, flux_penalty, ridge,
           sigma_clip, max_iter, verbose, cancel, method, keep_images):
    t_start = time.perf_counter()
    log = make_logger(verbose)
    if err is True or template_err is True:
        raise InputError("solve() needs noise maps as arrays: build them first "
                         "(diffgui.engine.common.noise.build_noise_map) or call run_sfft(err=True).")
    if method not in ("auto", "fft", "direct"):
        raise InputError(f"method must be 'auto', 'fft' or 'direct', got {method!r}")
    vp = validate_pair(image, template, mask, template_mask, err, template_err)
    shape = vp.shape
    ny, nx = shape
    ks = _kernel_shape(kernel_shape, shape)
    kpo, bpo, fpo, max_iter = _check_params(kernel_poly_order, bg_poly_order, flux_poly_order,
                                            flux_penalty, ridge, sigma_clip, max_iter)
    clip = bool(sigma_clip) and max_iter > 1
    ky, kx = ks
    hy, hx = ky // 2, kx // 2
    kexp, bexp = poly_exponents(kpo), poly_exponents(bpo)
    nk, nkp, nbg = ky * kx, len(kexp), len(bexp)
    nkk = nk * nkp
    npar = nkk + nbg

    img, tmpl = vp.image, vp.template
    tpl_bad = vp.template_mask
    dmask = _grow(tpl_bad, ky, kx)
    dmask[:hy] = dmask[ny - hy:] = True
    dmask[:, :hx] = dmask[:, nx - hx:] = True
    good = ~(vp.mask | dmask)
    n_good = int(good.sum())
    if n_good == 0:
        raise InputError("no usable pixels: the masks, the template defects grown by the kernel "
                         f"{ks} and the edge band cover the whole image.")
    if n_good < npar + 10:
        raise FitError(f"too few usable pixels ({n_good}) for {npar} parameters: use a smaller "
                       "kernel or lower polynomial orders, or unmask more pixels.")
    check_cancel(cancel)

    w_true = np.zeros(shape)
    if vp.err is None:
        w_true[good] = 1.0
    else:
        w_true[good] = 1.0 / np.square(vp.err[good])

    # Centre the template: exact reparametrisation when the background can absorb
    # r0 * (kernel sum), which the first kernel_poly_order terms of Q span.
    r0 = _sample_median(tmpl[~tpl_bad]) if bpo >= kpo else 0.0
    Rpad, Rc = DesignRows.padded(shape, ks)
    np.subtract(tmpl, r0, out=Rc)
    Rc[tpl_bad] = 0.0
    Spad, S = DesignRows.padded(shape, ks)
    S[good] = img[good]
    rows = DesignRows(Rpad, Spad, ks, kpo, bpo)

    # Choose the assembly.
    n_interior = (ny - 2 * hy) * (nx - 2 * hx)
    n_ring = (ny + 2 * hy) * (nx + 2 * hx) - n_interior
    n_exc = n_ring + (n_interior - n_good) + DEV_MAX_FRACTION * 0.5 * n_good
    if method == "auto":
        method = "direct" if n_good < n_exc + 0.05 * ny * nx else "fft"
    log(f"SFFT: {ny}x{nx}, kernel {ky}x{kx}, orders kernel {kpo} / bg {bpo} / flux {fpo}, "
        f"{npar} parameters, {n_good} usable pixels, {method} assembly")

    store = None
    if method == "fft":
        t0 = time.perf_counter()
        Hb, gb, store = base_normal_equations(Rc, S, ks, kpo, bpo, cancel=cancel)
        system = _System(rows, Hb, gb)
        ry, rx = _ring(shape, hy, hx)
        inner = np.zeros(shape, dtype=bool)
        inner[hy:ny - hy, hx:nx - hx] = True
        inner &= ~good
        by, bx = np.nonzero(inner)
        system.remove_from_base(np.concatenate([ry, by]), np.concatenate([rx, bx]))
        del inner, ry, rx, by, bx
        log(f"SFFT: FFT assembly {time.perf_counter() - t0:.2f} s")
    else:
        system = _System(rows)
    dev = np.zeros(shape, dtype=bool)
    E = shift_expansion(kexp, kexp, *_unit_offsets(ks, shape))

    def set_weights(w, individual=True):
        """(Re)build the individually weighted part for weights ``w`` on the good pixels.

        FFT mode: pixels within WEIGHT_TOL of the median weight w0 use w0;
        ``individual=False`` gives every pixel w0.
        """
        nonlocal dev
        if system.Hb is None:
            dev = good.copy()
            yy, xx = np.nonzero(dev)
            system.set_individual(yy, xx, w[yy, xx], 0.0)
            return
        wg = w[good]
        w0 = _sample_median(wg)
        score = np.abs(np.log(wg / w0))
        thr = np.log1p(WEIGHT_TOL) if individual else np.inf
        if np.count_nonzero(score > thr) > DEV_MAX_FRACTION * wg.size:
            thr = float(np.quantile(score, 1.0 - DEV_MAX_FRACTION))
        dev = np.zeros(shape, dtype=bool)
        dev[good] = score > thr
        del wg, score
        yy, xx = np.nonzero(dev)
        system.set_individual(yy, xx, w[yy, xx], w0)

    def fit():
        H, g = system.matrix()
        Hp = _penalised(H, nkk, nkp, kexp, fpo, flux_penalty, ridge)
        x, rc = _solve_spd(Hp, g)
        return x, rc, Hp

    def normalised_residuals(x, sqrt_w):
        """``(S - model) sqrt(w)`` and the model's source S/N ``|K*Rc - median| sqrt(w)``
        on the full grid (0 off the fitted pixels)."""
        kx_ = np.concatenate([x[:nkk], np.zeros(nbg)])
        if store is None:
            yy, xx = np.nonzero(good)
            mk = rows.predict(yy, xx, kx_)
            bgv = poly_values(bexp, normalise(xx, nx), normalise(yy, ny)) @ x[nkk:]
            r, snr = np.zeros(shape), np.zeros(shape)
            sw = sqrt_w[yy, xx]
            r[yy, xx] = (S[yy, xx] - mk - bgv) * sw
            snr[yy, xx] = np.abs(mk - np.median(mk)) * sw
            return r, snr
        th = x[:nkk].reshape(nk, nkp)
        L = np.einsum("aim,ai->ma", E, th)
        mk = store.convolve([L[m].reshape(ks) for m in range(nkp)], cancel)
        r = np.subtract(S, mk)
        add_poly_map(r, x[nkk:], bexp, -1.0)
        r *= sqrt_w
        mk -= _sample_median(_subsample(mk, good))
        np.abs(mk, out=mk)
        mk *= sqrt_w
        return r, mk

    reweight = vp.template_err is not None
    # The first fit only feeds the template-noise reweighting: median weights do.
    set_weights(w_true, individual=not reweight)
    check_cancel(cancel)
    x, rcond, Hp = fit()
    n_iter = 1
    n_clipped = 0
    clip_passes = 0
    sigma = float("nan")
    while reweight or (clip and clip_passes < max_iter - 1):
        check_cancel(cancel)
        if reweight:
            reweight = False
            th = x[:nkk].reshape(nk, nkp)
            var_t = np.square(vp.template_err)
            var_t[tpl_bad] = 0.0
            vc = _approx_convolved_variance(th, ks, kexp, var_t, cancel)
            del var_t
            if vp.err is None:
                # Constant science variance from the residuals of the first fit.
                rn, _ = normalised_residuals(x, good.astype(np.float64))
                vc[good] += _robust_sigma(_subsample(rn, good)) ** 2
                del rn
            else:
                vc[good] += np.square(vp.err[good])
            w_true = np.zeros(shape)
            w_true[good] = 1.0 / vc[good]
            del vc
            set_weights(w_true)
            x, rcond, Hp = fit()
            n_iter += 1
            log(f"SFFT: pass {n_iter}: reweighted with the template noise")
            continue
        rn, snr = normalised_residuals(x, np.sqrt(w_true))
        clip_passes += 1
        cy, cx, sigma, note = _clip_candidates(rn, snr, good, sigma_clip)
        del rn, snr
        if cy is None:
            break
        nb = cy.size
        if nb == 0:
            log(f"SFFT: pass {n_iter}: nothing to clip (sigma {sigma:.4g}{note})")
            break
        if n_good - nb < npar + 10:
            raise FitError(f"sigma clipping left too few pixels ({n_good - nb}) for {npar} parameters: "
                           "raise sigma_clip.")
        system.clip(cy, cx, w_true[cy, cx], dev[cy, cx])
        dev[cy, cx] = False
        good[cy, cx] = False
        w_true[cy, cx] = 0.0
        n_good -= nb
        n_clipped += nb
        x_old = x
        x, rcond, Hp = fit()
        n_iter += 1
        dx_ = x - x_old
        wsum = float(w_true.sum())
        change = np.sqrt(max(float(dx_ @ Hp @ dx_), 0.0) / max(wsum, 1e-300)) / sigma
        log(f"SFFT: pass {n_iter}: clipped {nb} px at {sigma_clip} x {sigma:.4g}{note}, "
            f"{n_good} left, predicted model change {change:.2e} sigma")
        # Stop once further clipping cannot move the model by more than a
        # fraction of its own statistical uncertainty, ~sqrt(npar / n_good) sigma.
        if change < max(CONVERGENCE_TOL, 0.5 * np.sqrt(npar / n_good)):
            break
    del system, Spad, S

    check_cancel(cancel)
    th = x[:nkk].reshape(nk, nkp)
    s = th.sum(axis=0)
    bg = x[nkk:].copy()
    if r0:
        bg[:nkp] -= r0 * s
        Rc[~tpl_bad] += r0          # back to the template itself, zero at defects
    del store
    # The outputs use float64 spectra of the template itself (zero at defects).
    conv = poly_conv_sum(Rc, _kernels_by_term(th, ks), kexp, cancel=cancel)
    del rows, Rpad, Rc
    diff = img - conv
    add_poly_map(diff, bg, bexp, -1.0)
    r = diff[good]
    rms = float(np.sqrt(np.mean(r * r)))
    chi2 = float(np.sum(r * r * w_true[good]))
    del r
    bad_sci = ~np.isfinite(img)
    if bad_sci.any():
        diff[bad_sci] = 0.0
    result = SFFTResult(
        kernel_coeffs=th.copy(), bg_coeffs=bg, flux_poly_coeffs=s[:len(poly_exponents(fpo))].copy(),
        kernel_shape=ks, kernel_poly_order=kpo, bg_poly_order=bpo, flux_poly_order=fpo,
        image_shape=shape, n_iter=n_iter, n_good=n_good, n_clipped=n_clipped, chi2=chi2,
        rms=rms, mode=method, rcond=rcond, dmask=dmask, fit_mask=good,
        diff=diff if keep_images else None, convolved=conv if keep_images else None,
        params=dict(flux_penalty=float(flux_penalty), ridge=float(ridge),
                    sigma_clip=sigma_clip, max_iter=max_iter, template_offset=r0,
                    n_weighted=int(dev.sum())),
    )
    result.time = time.perf_counter() - t_start
    log(result.summary())
    return result


# ----------------------------------------------------------------------------------------
# stdpipe 0.4.1 compatibility: module-level evaluation helpers
def evaluate_kernel_at(result: SFFTResult, x, y, image_shape=None):
    """Same as :meth:`SFFTResult.evaluate_kernel_at` (stdpipe's module function)."""
    return result.evaluate_kernel_at(x, y, image_shape)


def evaluate_flux_scale(result: SFFTResult, x, y, image_shape=None):
    """Same as :meth:`SFFTResult.evaluate_flux_scale` (stdpipe's module function)."""
    return result.evaluate_flux_scale(x, y, image_shape)


def evaluate_background(result: SFFTResult, x, y, image_shape=None):
    """Same as :meth:`SFFTResult.evaluate_background` (stdpipe's module function)."""
    return result.evaluate_background(x, y, image_shape)
