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
all kernel offsets at once (:mod:`.assembly`): seven FFTs per image strip
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
from types import SimpleNamespace

import numpy as np

from diffgui.engine.errors import FitError, InputError, check_cancel, make_logger, validate_pair
from diffgui.engine.sfft.assembly import add_poly_map, base_normal_equations, poly_conv_sum
from diffgui.engine.sfft.design_rows import DesignRows
from diffgui.engine.sfft.basis import normalise, poly_exponents, poly_values, shift_expansion
from diffgui.engine.sfft.linalg import _penalised, _single_thread_blas, _solve_spd, _System
from diffgui.engine.sfft.pixels import (_approx_convolved_variance, _clip_candidates, _grow,
                                        _kernels_by_term, _ring, _robust_sigma, _sample_median,
                                        _subsample, _unit_offsets)
from diffgui.engine.sfft.result import SFFTResult

#: Pixels whose inverse variance is within this fraction of the median weight use the median.
WEIGHT_TOL = 0.2
#: At most this fraction of the fitted pixels gets an individual weight (the most deviant ones).
DEV_MAX_FRACTION = 0.15
#: Clipping stops once the predicted RMS model change is below this fraction of the noise
#: (or below half the model's statistical uncertainty, whichever is larger).
CONVERGENCE_TOL = 1e-3


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


def _integer(value, name, minimum=0, what="a non-negative integer"):
    try:
        v = int(value)
    except Exception:
        raise InputError(f"{name} must be {what}, got {value!r}") from None
    if v != value or v < minimum:
        raise InputError(f"{name} must be {what}, got {value!r}")
    return v


def _check_params(kernel_poly_order, bg_poly_order, flux_poly_order, flux_penalty, ridge,
                  sigma_clip, max_iter):
    kpo = _integer(kernel_poly_order, "kernel_poly_order")
    bpo = _integer(bg_poly_order, "bg_poly_order")
    fpo = kpo if flux_poly_order is None else _integer(flux_poly_order, "flux_poly_order")
    if fpo > kpo:
        raise InputError(f"flux_poly_order ({fpo}) cannot exceed kernel_poly_order ({kpo}): "
                         "the kernel sum is a polynomial of the kernel's order at most.")
    for name, v in (("flux_penalty", flux_penalty), ("ridge", ridge)):
        if not (np.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
    if sigma_clip is not None and sigma_clip is not False:
        if not (np.isfinite(sigma_clip) and sigma_clip >= 0):
            raise InputError(f"sigma_clip must be > 0 (or None/0 to disable), got {sigma_clip!r}")
    mi = _integer(max_iter, "max_iter", 1, "an integer >= 1")
    return kpo, bpo, fpo, mi



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
    """The body of :func:`solve`: setup, assembly, the fit passes, the result."""
    t_start = time.perf_counter()
    log = make_logger(verbose)
    if err is True or template_err is True:
        raise InputError("solve() needs noise maps as arrays: build them first "
                         "(diffgui.engine.common.noise.build_noise_map) or call run_sfft(err=True).")
    if method not in ("auto", "fft", "direct"):
        raise InputError(f"method must be 'auto', 'fft' or 'direct', got {method!r}")
    f = _setup(image, template, mask, template_mask, err, template_err, kernel_shape,
               kernel_poly_order, bg_poly_order, flux_poly_order, flux_penalty, ridge,
               sigma_clip, max_iter)
    check_cancel(cancel)
    method = _choose_method(f, method, log)
    system, store = _build_system(f, method, cancel, log)
    f.dev = np.zeros(f.shape, dtype=bool)
    E = shift_expansion(f.kexp, f.kexp, *_unit_offsets(f.ks, f.shape))
    reweight = f.vp.template_err is not None
    # The first fit only feeds the template-noise reweighting: median weights do.
    _set_weights(f, system, f.w_true, individual=not reweight)
    check_cancel(cancel)
    x, rcond, Hp = _fit(f, system, flux_penalty, ridge)
    n_iter = 1
    log.progress("SFFT iterations", n_iter / (f.max_iter + 1))
    f.n_clipped = 0
    clip_passes = 0
    while reweight or (f.clip and clip_passes < f.max_iter - 1):
        check_cancel(cancel)
        if reweight:
            reweight = False
            _reweight(f, system, store, E, x, cancel)
            x, rcond, Hp = _fit(f, system, flux_penalty, ridge)
            n_iter += 1
            log(f"SFFT: pass {n_iter}: reweighted with the template noise")
            continue
        rn, snr = _normalised_residuals(f, store, E, x, np.sqrt(f.w_true), cancel)
        clip_passes += 1
        cy, cx, sigma, note = _clip_candidates(rn, snr, f.good, sigma_clip)
        del rn, snr
        if cy is None:
            break
        nb = cy.size
        if nb == 0:
            log(f"SFFT: pass {n_iter}: nothing to clip (sigma {sigma:.4g}{note})")
            break
        _clip_pixels(f, system, cy, cx)
        x_old = x
        x, rcond, Hp = _fit(f, system, flux_penalty, ridge)
        n_iter += 1
        dx_ = x - x_old
        wsum = float(f.w_true.sum())
        change = np.sqrt(max(float(dx_ @ Hp @ dx_), 0.0) / max(wsum, 1e-300)) / sigma
        log.progress("SFFT iterations", n_iter / (f.max_iter + 1))
        log(f"SFFT: pass {n_iter}: clipped {nb} px at {sigma_clip} x {sigma:.4g}{note}, "
            f"{f.n_good} left, predicted model change {change:.2e} sigma")
        # Stop once further clipping cannot move the model by more than a
        # fraction of its own statistical uncertainty, ~sqrt(npar / n_good) sigma.
        if change < max(CONVERGENCE_TOL, 0.5 * np.sqrt(f.npar / f.n_good)):
            break
    del system, f.Spad, f.S, store
    log.progress("SFFT iterations", 1.0)
    check_cancel(cancel)
    result = _result(f, x, rcond, n_iter, method, flux_penalty, ridge, sigma_clip,
                     keep_images, cancel)
    result.time = time.perf_counter() - t_start
    log(result.summary())
    return result


def _setup(image, template, mask, template_mask, err, template_err, kernel_shape,
           kernel_poly_order, bg_poly_order, flux_poly_order, flux_penalty, ridge,
           sigma_clip, max_iter):
    """Validated inputs, the model's sizes, the usable pixels, weights and the padded
    design images, as one namespace shared by the steps of :func:`_solve`."""
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
    return SimpleNamespace(
        vp=vp, shape=shape, ny=ny, nx=nx, ks=ks, kpo=kpo, bpo=bpo, fpo=fpo, max_iter=max_iter,
        clip=clip, hy=hy, hx=hx, kexp=kexp, bexp=bexp, nk=nk, nkp=nkp, nbg=nbg, nkk=nkk,
        npar=npar, img=img, tpl_bad=tpl_bad, dmask=dmask, good=good, n_good=n_good,
        w_true=w_true, r0=r0, Rpad=Rpad, Rc=Rc, Spad=Spad, S=S, rows=rows)


def _choose_method(f, method, log):
    """'fft' or 'direct' assembly ('auto': the cheaper one for this many excluded pixels)."""
    ny, nx, hy, hx, n_good = f.ny, f.nx, f.hy, f.hx, f.n_good
    n_interior = (ny - 2 * hy) * (nx - 2 * hx)
    n_ring = (ny + 2 * hy) * (nx + 2 * hx) - n_interior
    n_exc = n_ring + (n_interior - n_good) + DEV_MAX_FRACTION * 0.5 * n_good
    if method == "auto":
        method = "direct" if n_good < n_exc + 0.05 * ny * nx else "fft"
    ky, kx = f.ks
    log(f"SFFT: {ny}x{nx}, kernel {ky}x{kx}, orders kernel {f.kpo} / bg {f.bpo} / flux {f.fpo}, "
        f"{f.npar} parameters, {n_good} usable pixels, {method} assembly")
    return method


def _build_system(f, method, cancel, log):
    """The normal equations: FFT-assembled base minus the excluded pixels, or empty
    (direct: every pixel added individually). Returns ``(system, store)``."""
    if method != "fft":
        return _System(f.rows), None
    shape, ny, nx, hy, hx = f.shape, f.ny, f.nx, f.hy, f.hx
    t0 = time.perf_counter()
    Hb, gb, store = base_normal_equations(f.Rc, f.S, f.ks, f.kpo, f.bpo, cancel=cancel, progress=log.progress)
    system = _System(f.rows, Hb, gb)
    ry, rx = _ring(shape, hy, hx)
    inner = np.zeros(shape, dtype=bool)
    inner[hy:ny - hy, hx:nx - hx] = True
    inner &= ~f.good
    by, bx = np.nonzero(inner)
    system.remove_from_base(np.concatenate([ry, by]), np.concatenate([rx, bx]))
    del inner, ry, rx, by, bx
    log(f"SFFT: FFT assembly {time.perf_counter() - t0:.2f} s")
    return system, store


def _set_weights(f, system, w, individual=True):
    """(Re)build the individually weighted part for weights ``w`` on the good pixels.

    FFT mode: pixels within WEIGHT_TOL of the median weight w0 use w0;
    ``individual=False`` gives every pixel w0. Sets ``f.dev`` (the pixels with
    individual weights).
    """
    good, shape = f.good, f.shape
    if system.Hb is None:
        f.dev = good.copy()
        yy, xx = np.nonzero(f.dev)
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
    f.dev = dev
    del wg, score
    yy, xx = np.nonzero(dev)
    system.set_individual(yy, xx, w[yy, xx], w0)


def _fit(f, system, flux_penalty, ridge):
    """Solve the penalised normal equations: ``(x, rcond, penalised matrix)``."""
    H, g = system.matrix()
    Hp = _penalised(H, f.nkk, f.nkp, f.kexp, f.fpo, flux_penalty, ridge)
    x, rc = _solve_spd(Hp, g)
    return x, rc, Hp


def _normalised_residuals(f, store, E, x, sqrt_w, cancel):
    """``(S - model) sqrt(w)`` and the model's source S/N ``|K*Rc - median| sqrt(w)``
    on the full grid (0 off the fitted pixels)."""
    nkk, nbg, nk, nkp, S = f.nkk, f.nbg, f.nk, f.nkp, f.S
    kx_ = np.concatenate([x[:nkk], np.zeros(nbg)])
    if store is None:
        yy, xx = np.nonzero(f.good)
        mk = f.rows.predict(yy, xx, kx_)
        bgv = poly_values(f.bexp, normalise(xx, f.nx), normalise(yy, f.ny)) @ x[nkk:]
        r, snr = np.zeros(f.shape), np.zeros(f.shape)
        sw = sqrt_w[yy, xx]
        r[yy, xx] = (S[yy, xx] - mk - bgv) * sw
        snr[yy, xx] = np.abs(mk - np.median(mk)) * sw
        return r, snr
    th = x[:nkk].reshape(nk, nkp)
    L = np.einsum("aim,ai->ma", E, th)
    mk = store.convolve([L[m].reshape(f.ks) for m in range(nkp)], cancel)
    r = np.subtract(S, mk)
    add_poly_map(r, x[nkk:], f.bexp, -1.0)
    r *= sqrt_w
    mk -= _sample_median(_subsample(mk, f.good))
    np.abs(mk, out=mk)
    mk *= sqrt_w
    return r, mk


def _reweight(f, system, store, E, x, cancel):
    """New weights with the template noise propagated through the fitted kernel."""
    vp, good = f.vp, f.good
    th = x[:f.nkk].reshape(f.nk, f.nkp)
    var_t = np.square(vp.template_err)
    var_t[f.tpl_bad] = 0.0
    vc = _approx_convolved_variance(th, f.ks, f.kexp, var_t, cancel)
    del var_t
    if vp.err is None:
        # Constant science variance from the residuals of the first fit.
        rn, _ = _normalised_residuals(f, store, E, x, good.astype(np.float64), cancel)
        vc[good] += _robust_sigma(_subsample(rn, good)) ** 2
        del rn
    else:
        vc[good] += np.square(vp.err[good])
    f.w_true = np.zeros(f.shape)
    f.w_true[good] = 1.0 / vc[good]
    del vc
    _set_weights(f, system, f.w_true)


def _clip_pixels(f, system, cy, cx):
    """Remove clipped pixels from the system, the fit mask and the weights."""
    nb = cy.size
    if f.n_good - nb < f.npar + 10:
        raise FitError(f"sigma clipping left too few pixels ({f.n_good - nb}) for {f.npar} "
                       "parameters: raise sigma_clip.")
    system.clip(cy, cx, f.w_true[cy, cx], f.dev[cy, cx])
    f.dev[cy, cx] = False
    f.good[cy, cx] = False
    f.w_true[cy, cx] = 0.0
    f.n_good -= nb
    f.n_clipped += nb


def _result(f, x, rcond, n_iter, method, flux_penalty, ridge, sigma_clip, keep_images,
            cancel):
    """The :class:`SFFTResult`: coefficients back on the uncentred template, difference,
    convolved template and fit statistics."""
    nkk, nk, nkp, good, w_true = f.nkk, f.nk, f.nkp, f.good, f.w_true
    th = x[:nkk].reshape(nk, nkp)
    s = th.sum(axis=0)
    bg = x[nkk:].copy()
    if f.r0:
        bg[:nkp] -= f.r0 * s
        f.Rc[~f.tpl_bad] += f.r0          # back to the template itself, zero at defects
    # The outputs use float64 spectra of the template itself (zero at defects).
    conv = poly_conv_sum(f.Rc, _kernels_by_term(th, f.ks), f.kexp, cancel=cancel)
    del f.rows, f.Rpad, f.Rc
    img = f.img
    diff = img - conv
    add_poly_map(diff, bg, f.bexp, -1.0)
    r = diff[good]
    rms = float(np.sqrt(np.mean(r * r)))
    chi2 = float(np.sum(r * r * w_true[good]))
    del r
    bad_sci = ~np.isfinite(img)
    if bad_sci.any():
        diff[bad_sci] = 0.0
    return SFFTResult(
        kernel_coeffs=th.copy(), bg_coeffs=bg, flux_poly_coeffs=s[:len(poly_exponents(f.fpo))].copy(),
        kernel_shape=f.ks, kernel_poly_order=f.kpo, bg_poly_order=f.bpo, flux_poly_order=f.fpo,
        image_shape=f.shape, n_iter=n_iter, n_good=f.n_good, n_clipped=f.n_clipped, chi2=chi2,
        rms=rms, mode=method, rcond=rcond, dmask=f.dmask, fit_mask=good,
        diff=diff if keep_images else None, convolved=conv if keep_images else None,
        params=dict(flux_penalty=float(flux_penalty), ridge=float(ridge),
                    sigma_clip=sigma_clip, max_iter=f.max_iter,
                    template_offset=f.r0, n_weighted=int(f.dev.sum())),
    )
