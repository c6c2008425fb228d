"""PSF estimation from an image's own stars: detection, star selection, then the stack.

:func:`estimate_psf` reads as the outline: prepare data and noise, detect, pick a FWHM
and grid, select isolated unsaturated stars, stack them (:mod:`.stacking`) and wrap
the result as a PSF dict (:mod:`.model`).
"""

from __future__ import annotations

import numpy as np

from diffgui.engine.errors import FitError, InputError, as_image, as_mask, check_cancel, make_logger
from diffgui.engine.psf.model import (evaluate_model, get_psf_stamp, make_psf, measure_fwhm,
                                      ncoeffs_for_degree)
from diffgui.engine.psf.stacking import stack_stars


#: Keyword arguments of :func:`estimate_psf` that ``run_zogy(**kwargs)`` forwards.
ESTIMATE_OPTIONS = ("order", "psf_size", "oversampling", "thresh", "minarea", "aper", "gain",
                    "saturation", "sn", "max_stars", "min_stars", "isolation", "max_contamination",
                    "max_ellipticity", "niter", "fwhm_range", "denoise")
#: stdpipe ``run_psfex`` options that only make sense for the external programs.
IGNORED_PSFEX_OPTIONS = ("sex_extra", "psfex_extra", "checkimages", "extra", "_workdir", "_tmpdir",
                         "_exe", "_sex_exe", "_psfex_exe", "mask_to_nans", "get_obj", "verbose")



def _mask_radius(flux, fwhm, sigma, kappa=0.5, beta=2.5):
    """Radius beyond which a star of ``flux`` adds less than ``kappa * sigma`` per
    pixel, for a Moffat profile of the given FWHM (a conservative wing)."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    peak = flux * (beta - 1.0) / (np.pi * alpha * alpha)
    ratio = np.maximum(peak / (kappa * sigma), 1.0)
    return alpha * np.sqrt(ratio ** (1.0 / beta) - 1.0)


#: Detection flags that always disqualify a PSF star: saturated, truncated at the
#: edge. Deblended stars (0x2) and masked pixels in the footprint or aperture
#: (0x100, 0x10; stars near the edge are cut separately) are judged by their
#: neighbours' light and the core's pixels.
_REJECT_FLAGS = 0x4 | 0x8


def _moffat(r, fwhm, beta=2.5):
    """Moffat profile of the given FWHM, 1 at the centre (a conservative wing)."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return (1.0 + (np.asarray(r, float) / alpha) ** 2) ** (-beta)


def _peak_contrast(data, bad, x, y):
    """Mean of the 4 neighbours of each object's brightest pixel (in its 3x3)
    over that pixel, and whether two or more bad pixels lie in the 3x3.

    A point source of FWHM ``f`` has a ratio of at least about
    ``exp(-2.77 / f**2)``; hot pixels and cosmic rays have ~0.
    """
    h, w = data.shape
    ix = np.clip(np.round(x).astype(int), 2, w - 3)
    iy = np.clip(np.round(y).astype(int), 2, h - 3)
    off = np.arange(-1, 2)
    win = data[iy[:, None, None] + off[None, :, None], ix[:, None, None] + off[None, None, :]]
    core_bad = bad[iy[:, None, None] + off[None, :, None], ix[:, None, None] + off[None, None, :]]
    k = np.argmax(win.reshape(len(x), 9), axis=1)
    py, px = iy + k // 3 - 1, ix + k % 3 - 1
    peak = data[py, px]
    nb = (data[py - 1, px] + data[py + 1, px] + data[py, px - 1] + data[py, px + 1]) / 4.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(peak > 0, nb / peak, 0.0)
    return ratio, core_bad.sum(axis=(1, 2)) >= 2


def _halfmax_fwhm(data, x, y, r):
    """FWHM of each object from its area above half its peak (window ``r`` px).

    Detection FWHMs (twice the half-light radius) grow with extended wings
    and with neighbours' light; the half-maximum area measures the core.
    """
    h, w = data.shape
    r = int(np.clip(r, 2, 20))
    x = np.clip(np.round(np.asarray(x, float)).astype(int), r, w - r - 1)
    y = np.clip(np.round(np.asarray(y, float)).astype(int), r, h - r - 1)
    off = np.arange(-r, r + 1)
    win = data[y[:, None, None] + off[None, :, None], x[:, None, None] + off[None, None, :]]
    peak = win[:, r - 1:r + 2, r - 1:r + 2].max(axis=(1, 2))
    area = (win >= 0.5 * peak[:, None, None]).sum(axis=(1, 2))
    return np.where(peak > 0, 2.0 * np.sqrt(area / np.pi), np.nan)


def _is_sharp(ratio, fwhm):
    """Objects much sharper than a PSF of FWHM ``fwhm`` (cosmic rays, hot pixels)."""
    return ratio < 0.5 * np.exp(-2.773 / max(float(fwhm), 1.0) ** 2)


def _candidates(obj, data, bad, shape, half, fwhm, sn, max_ellipticity, fwhm_range, log):
    """Indices of objects that may be PSF stars (flags, S/N, shape, edge, sharpness)."""
    x = np.asarray(obj["x"], float)
    y = np.asarray(obj["y"], float)
    flux = np.asarray(obj["flux"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / np.asarray(obj["fluxerr"], float)
        ell = 1.0 - np.asarray(obj["b"], float) / np.asarray(obj["a"], float)
    flags = np.asarray(obj["flags"], int)
    h, w = shape
    m = half + 2
    ok = ((flags & _REJECT_FLAGS) == 0) & np.isfinite(snr) & (snr >= sn) & (flux > 0)
    ok &= (x >= m) & (y >= m) & (x <= w - 1 - m) & (y <= h - 1 - m)
    if ok.sum() >= 5:
        # Trailed or astigmatic images: every star is elongated, so the
        # limit follows the image's own median ellipticity.
        max_ellipticity = max(max_ellipticity, float(np.nanmedian(ell[ok])) + 0.15)
    ok &= np.isfinite(ell) & (ell <= max_ellipticity)
    cf = np.full(len(obj), np.nan)
    if ok.any():
        cf[ok] = _halfmax_fwhm(data, x[ok], y[ok], np.ceil(1.5 * fwhm))
    ok &= np.isfinite(cf) & (cf >= fwhm * fwhm_range[0]) & (cf <= fwhm * fwhm_range[1])
    ratio, core_bad = _peak_contrast(data, bad, x, y)
    sharp = _is_sharp(ratio, fwhm)
    nsharp = int((ok & sharp).sum())
    ok &= ~sharp & ~core_bad
    log(f"PSF: {ok.sum()} of {len(obj)} objects pass flags/S/N/shape/edge cuts"
        + (f" ({nsharp} rejected as much sharper than the PSF: hot pixels or cosmic rays)"
           if nsharp else ""))
    return np.flatnonzero(ok)


def _select_stars(obj, data, bad, half, fwhm, sn, max_ellipticity, isolation, max_contamination,
                  fwhm_range, sigma, log):
    """Indices of usable stars and, for each, the neighbours to mask as
    ``(index, radius)`` pairs.

    Isolation is judged relative to the PSF, so crowded fields keep their
    stars: a neighbour closer than ``isolation`` FWHM with more than 1 %
    of the star's flux (a blend) rejects a star, and so does the neighbours' light (a Moffat profile of the FWHM)
    at the edge of the star's core (radius 1 FWHM) when it exceeds
    ``max_contamination`` times the star's own light there. Other
    neighbours are masked out to the radius where their light falls below
    half the noise, except inside the star's core.
    """
    idx = _candidates(obj, data, bad, data.shape, half, fwhm, sn, max_ellipticity, fwhm_range, log)
    if idx.size == 0:
        return idx, []
    from scipy.spatial import cKDTree

    x = np.asarray(obj["x"], float)
    y = np.asarray(obj["y"], float)
    flux = np.asarray(obj["flux"], float)
    flux = np.where(np.isfinite(flux) & (flux > 0), flux, 0.0)
    rmask = np.maximum(_mask_radius(flux, fwhm, sigma), 1.5 * fwhm)
    tree = cKDTree(np.c_[x, y])
    reach = np.hypot(half, half) + 1.0
    core = 1.0 * fwhm
    own = _moffat(core, fwhm)
    keep, neighbours = [], []
    nblend = ncont = 0
    for i in idx:
        near = [j for j in tree.query_ball_point((x[i], y[i]), reach + rmask.max()) if j != i]
        d = np.hypot(x[near] - x[i], y[near] - y[i]) if near else np.zeros(0)
        if ((d < isolation * fwhm) & (flux[near] > 0.01 * flux[i])).any():
            nblend += 1
            continue
        cont = float(np.sum(flux[near] * _moffat(np.maximum(d - core, 0.0), fwhm))) / (flux[i] * own)
        if cont > max_contamination:
            ncont += 1
            continue
        keep.append(i)
        neighbours.append([(j, rmask[j]) for j, dj in zip(near, d) if dj < reach + rmask[j]])
    log(f"PSF: {len(keep)} stars clear of their neighbours ({nblend} blended within "
        f"{isolation:g} FWHM = {isolation * fwhm:.1f} px, {ncont} with neighbour light above {max_contamination:g} of "
        "their own at the core's edge)")
    return np.array(keep, dtype=int), neighbours


def estimate_psf(image, mask=None, err=None, *, fwhm=None, order=0, psf_size=None, oversampling=None,
                 thresh=5.0, minarea=5, aper=None, gain=None, saturation=None, sn=20.0, max_stars=300,
                 min_stars=None, isolation=1.5, max_contamination=0.1, max_ellipticity=0.3,
                 fwhm_range=(0.6, 1.6), niter=None,
                 denoise=True, background=None, subtract_background=True, obj=None, get_obj=False,
                 cancel=None, verbose=False):
    """Estimate an effective PSF from an image's own stars (no external program).

    Parameters
    ----------
    image : array_like
        2-D image.
    mask : array_like of bool, optional
        True for bad pixels (never used in the stack; stars touching them are
        rejected by their detection flags).
    err : array_like, optional
        Per-pixel noise (sigma); default: background RMS, plus source Poisson
        noise when ``gain`` is given.
    fwhm : float, optional
        Initial FWHM guess in pixels; default: median FWHM of good detections
        measured from their area above half maximum (hot pixels excluded).
    order : int
        Degree (0-2) of the polynomial variation across the field.
    psf_size : int, optional
        Stamp size in image pixels (odd); default ``2 ceil(4 FWHM) + 1``.
    oversampling : int, optional
        Model grid oversampling; default 1 for FWHM >= 3 px, 2 for FWHM >= 2,
        3 for FWHM >= 1.4, else 4.
    thresh, minarea, aper, gain, saturation : optional
        Detection options (see :func:`diffgui.engine.common.detection.detect_objects`).
    sn : float
        Minimum S/N of a PSF star (PSFEx's SAMPLE_MINSN, default 20).
    max_stars : int
        At most this many stars (the highest-S/N ones) are stacked.
    min_stars : int, optional
        Fewest stars accepted (default ``max(5, 3 ncoeffs)``).
    isolation : float
        A detected neighbour closer than this many FWHM with more than 1 % of
        the star's flux (a blend) rejects a star.
    max_contamination : float
        Largest light of the neighbours (a conservative Moffat profile of
        the FWHM) at the edge of a star's core (1 FWHM) relative to the
        star's own light there; isolation relative to the PSF, so crowded
        fields keep enough stars. Neighbours are masked in the stack out to
        where their light is below half the noise, except in the core.
        Objects much sharper than the PSF (hot pixels, cosmic rays) and
        stars with two or more bad pixels around their peak are never used.
    max_ellipticity : float
        Largest ``1 - b/a`` of a PSF star; when the image's stars are
        elongated (trailed images), their median ellipticity plus 0.15.
    fwhm_range : (float, float)
        Accepted half-maximum FWHM of a PSF star relative to the median.
    niter : int, optional
        Refinement iterations (positions, fluxes, clipping); default 3, or 6
        on an oversampled grid (its binning converges more slowly).
    denoise : bool
        Replace the model's wings (beyond ``WING_START`` FWHM) by a fitted
        radial profile plus only the significant residual structure, and set
        the model's zero level from that profile (default True); the core is
        never changed.
    background : Background, optional
        Background model to subtract; estimated when needed.
    subtract_background : bool
        False when the image is already background-subtracted.
    obj : astropy.table.Table, optional
        Detections to use instead of running detection.
    get_obj : bool
        Also return the detection table.
    cancel : callable, optional
        Returns True to abort (raises Cancelled).
    verbose : bool or callable
        Logging.

    Returns
    -------
    dict or (dict, Table)
        The PSF dict (PSFEx layout; extra keys ``nstars``, ``oversampling``,
        ``type``), and the detections with ``get_obj``.

    Raises
    ------
    FitError
        Too few usable stars.
    """
    log = make_logger(verbose)
    img, bad, data, noise, background = _prepare_data(image, mask, err, gain, background,
                                                      subtract_background)
    order = int(order)
    if order < 0 or order > 3:
        raise InputError(f"PSF polynomial order must be 0-3, got {order}.")
    check_cancel(cancel)
    if obj is None:
        obj = _detect(img, bad, err, noise, thresh, minarea, aper, gain, saturation, background,
                      subtract_background)
    log(f"PSF: {len(obj)} objects detected")
    if len(obj) == 0:
        raise FitError("no objects detected for PSF estimation: lower 'thresh' or pass the PSF.")
    saturation = _clip_level(img, bad, saturation, log)
    fwhm0 = _initial_fwhm(obj, fwhm, sn, data, bad)
    half, osf, niter = _grid_geometry(fwhm0, psf_size, oversampling, niter, img.shape)
    nc = ncoeffs_for_degree(order)
    if min_stars is None:
        min_stars = max(5, 3 * nc)
    good_noise = noise[~bad & np.isfinite(noise) & (noise > 0)]
    sigma = float(np.median(good_noise)) if good_noise.size else 1.0
    isolation = _nonnegative("isolation", isolation)
    max_contamination = _nonnegative("max_contamination", max_contamination)
    idx, neighbours = _select_stars(obj, data, bad, half, fwhm0, sn, max_ellipticity, isolation,
                                    max_contamination, fwhm_range, sigma, log)
    idx, neighbours = _drop_saturated(img, obj, idx, neighbours, saturation)
    idx, neighbours = _brightest(obj, idx, neighbours, max_stars)
    if idx.size < min_stars:
        raise FitError(
            f"only {idx.size} usable PSF stars (need {min_stars} for order {order}): lower 'sn' or "
            "'thresh'; in a crowded field raise 'max_contamination' (now "
            f"{max_contamination:g}) or lower 'isolation' (now {isolation:g} FWHM); use a lower "
            "'order', or pass the PSF explicitly."
        )
    check_cancel(cancel)
    h, w = img.shape
    model, info = stack_stars(data, noise, bad, obj, idx, neighbours, half, osf, order, fwhm0,
                              niter, (w - 1) / 2.0, float(w), (h - 1) / 2.0, float(h), cancel, log,
                              denoise)
    psf = _make_estimated_psf(model, info, osf, order, img.shape, log)
    _check_plausible(psf["fwhm"], fwhm0)
    if get_obj:
        return psf, obj
    return psf


def _prepare_data(image, mask, err, gain, background, subtract_background):
    """Validated image, bad-pixel mask, background-subtracted data (bad pixels 0),
    noise map and the background model used."""
    from diffgui.engine.common.noise import build_noise_map, estimate_background

    img = as_image(image, "image")
    m = as_mask(mask, img.shape, "mask")
    bad = ~np.isfinite(img) if m is None else (m | ~np.isfinite(img))
    if background is None and (subtract_background or err is None):
        background = estimate_background(img, bad)
    data = img - background.back if subtract_background else img.copy()
    data[bad] = 0.0
    if err is None:
        noise = build_noise_map(img, gain=gain, mask=bad, background=background)
    else:
        from diffgui.engine.errors import as_noise

        noise = as_noise(err, img.shape, "err")
    return img, bad, data, noise, background


def _detect(img, bad, err, noise, thresh, minarea, aper, gain, saturation, background,
            subtract_background):
    """Detections for star selection (the given noise map only when ``err`` was given)."""
    from diffgui.engine.common.detection import detect_objects

    return detect_objects(img, mask=bad, err=None if err is None else noise, thresh=thresh,
                          minarea=minarea, aper=aper, gain=gain, saturation=saturation,
                          background=background, subtract_background=subtract_background)


def _clip_level(img, bad, saturation, log):
    """``saturation``, or the image maximum when the image looks clipped there."""
    if saturation is None:
        # Clipped (saturated) images have many pixels at one maximum value.
        vmax = img[~bad].max()
        if np.count_nonzero(img[~bad] >= vmax - 1e-9 * abs(vmax)) >= 3:
            saturation = vmax
            log(f"PSF: the image looks clipped at {vmax:g}: stars reaching it are rejected")
    return saturation


def _nonnegative(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(v) or v < 0:
        raise InputError(f"{name} must be >= 0, got {value!r}.")
    return v


def _initial_fwhm(obj, fwhm, sn, data, bad):
    """The given FWHM, or the median half-maximum FWHM of unflagged detections with
    S/N >= ``sn`` that are not single-pixel spikes (hot pixels, cosmic rays)."""
    if fwhm is not None:
        fwhm0 = float(fwhm)
        if not np.isfinite(fwhm0) or fwhm0 <= 0:
            raise InputError(f"fwhm must be a positive number, got {fwhm!r}.")
        return fwhm0
    with np.errstate(invalid="ignore", divide="ignore"):
        s0 = np.asarray(obj["flux"], float) / np.asarray(obj["fluxerr"], float)
    okf = ((np.asarray(obj["flags"]) & _REJECT_FLAGS) == 0) & np.isfinite(s0) & (s0 >= sn)
    x, y = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
    if okf.any():
        ratio, _ = _peak_contrast(data, bad, x[okf], y[okf])
        okf[okf] = ~_is_sharp(ratio, 1.0)
    if okf.sum() < 1:
        raise FitError("no unflagged object with enough S/N to measure the FWHM: pass fwhm= or the PSF.")
    # The brightest 30 % have the least noisy cores; the window grows to 1.5 FWHM.
    bright = okf & (s0 >= np.quantile(s0[okf], 0.7))
    fwhm0 = float(np.nanmedian(_halfmax_fwhm(data, x[bright], y[bright], 5)))
    if np.isfinite(fwhm0) and fwhm0 > 0:
        fwhm0 = float(np.nanmedian(_halfmax_fwhm(data, x[bright], y[bright], np.ceil(1.5 * fwhm0))))
    if not np.isfinite(fwhm0) or fwhm0 <= 0:
        raise FitError(f"could not determine a FWHM for PSF estimation (got {fwhm0}).")
    return fwhm0


def _grid_geometry(fwhm0, psf_size, oversampling, niter, shape):
    """Stamp half-size, grid oversampling and iteration count (defaults from the FWHM)."""
    if psf_size is None:
        half = int(np.clip(np.ceil(4.0 * fwhm0), 4, 64))
    else:
        psf_size = int(psf_size)
        if psf_size < 3:
            raise InputError(f"psf_size must be at least 3, got {psf_size}.")
        half = psf_size // 2
    if 2 * half + 1 > min(shape):
        raise InputError(f"PSF size {2 * half + 1} is larger than the image {shape}.")
    if oversampling is None:
        osf = 1 if fwhm0 >= 3.0 else (2 if fwhm0 >= 2.0 else (3 if fwhm0 >= 1.4 else 4))
    else:
        osf = int(oversampling)
        if osf < 1 or osf > 8:
            raise InputError(f"oversampling must be 1-8, got {oversampling}.")
    if niter is None:
        niter = 3 if osf == 1 else 6
    return half, osf, niter


def _drop_saturated(img, obj, idx, neighbours, saturation):
    """Remove stars whose 3 x 3 peak reaches (98 % of) ``saturation``."""
    if saturation is not None and idx.size:
        pk = np.array([img[int(round(obj["y"][i])) - 1:int(round(obj["y"][i])) + 2,
                           int(round(obj["x"][i])) - 1:int(round(obj["x"][i])) + 2].max() for i in idx])
        keep = pk < 0.98 * saturation if saturation > 0 else pk < saturation
        idx = idx[keep]
        neighbours = [nb for nb, k in zip(neighbours, keep) if k]
    return idx, neighbours


def _brightest(obj, idx, neighbours, max_stars):
    """The ``max_stars`` highest-S/N stars of ``idx`` (all when there are fewer)."""
    if idx.size > max_stars:
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = np.asarray(obj["flux"], float)[idx] / np.asarray(obj["fluxerr"], float)[idx]
        best = np.argsort(-snr)[:max_stars]
        idx = idx[best]
        neighbours = [neighbours[i] for i in best]
    return idx, neighbours


def _check_plausible(fwhm, fwhm0):
    """Refuse a PSF sharper than 1 px or far (x0.5 - x2) from the stars' FWHM."""
    if not np.isfinite(fwhm) or fwhm < 1.0 or not 0.5 <= fwhm / fwhm0 <= 2.0:
        raise FitError(
            f"implausible PSF: its FWHM is {fwhm:.2f} px while the detected stars have "
            f"{fwhm0:.2f} px (hot pixels or cosmic rays taken for stars?): mask them, pass "
            "fwhm= or the PSF explicitly."
        )


def _make_estimated_psf(model, info, osf, order, shape, log):
    """The PSF dict of a stacked model, with its FWHM measured at the field centre."""
    h, w = shape
    psf = make_psf(model, sampling=1.0 / osf, degree=order, x0=(w - 1) / 2.0, sx=float(w),
                   y0=(h - 1) / 2.0, sy=float(h), nstars=info["nstars"], oversampling=osf, type="diffgui")
    psf["fwhm"] = measure_fwhm(get_psf_stamp(psf, (w - 1) / 2.0, (h - 1) / 2.0, 0.0, 0.0)) if osf == 1 \
        else measure_fwhm(evaluate_model(psf, (w - 1) / 2.0, (h - 1) / 2.0), 1.0 / osf)
    log(f"PSF: model from {info['nstars']} stars, FWHM {psf['fwhm']:.2f} px, "
        f"{model.shape[-1]}x{model.shape[-2]} grid, oversampling {osf}, degree {order}")
    return psf
