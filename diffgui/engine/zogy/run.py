"""run_zogy's orchestration: noise maps, PSFs, the starting flux scale, fit regions
and the tiles, each handed to :func:`diffgui.engine.zogy.core.zogy_subtract`."""

from __future__ import annotations

import numpy as np

from diffgui.engine.errors import FitError, InputError, check_cancel, make_logger
from diffgui.engine.zogy.core import prepare_psf, zogy_subtract
from diffgui.engine.zogy.noise_correlation import estimate_noise_correlation, prepare_corr

#: Object flags that disqualify a star from the flux-scale match (deblended,
#: saturated, truncated at the edge, masked pixels in the footprint).
_BAD_MATCH_FLAGS = 0x2 | 0x4 | 0x8 | 0x100


def _positive_float(name, value, allow_zero=True):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}.")
    return v


#: ZOGY options (not PSF estimation ones) accepted through run_zogy's ``**kwargs``.
ZOGY_OPTIONS = ("noise_correlation", "background", "cosmics", "flux_scale")
#: Values of the ``flux_scale`` option: how ``fit_scale`` fits F_r ('kernel', default:
#: one F_r for the frame from the sum of a free matching kernel,
#: :mod:`diffgui.engine.zogy.kernel_scale`, free of PSF-model errors; 'fit': least
#: squares on D with the PSF models in each tile, together with the shift).
FLUX_SCALE_MODES = ("kernel", "fit")
#: Values of the ``background`` option (see :func:`diffgui.engine.zogy.zogy_subtract`).
BACKGROUND_MODES = ("mesh", "none")


def _split_kwargs(kwargs, log):
    from diffgui.engine.psf import ESTIMATE_OPTIONS, IGNORED_PSFEX_OPTIONS

    est = {}
    for k, v in kwargs.items():
        if k in ZOGY_OPTIONS:
            continue
        if k in ESTIMATE_OPTIONS:
            est[k] = v
        elif k in IGNORED_PSFEX_OPTIONS:
            log(f"ZOGY: option {k!r} is for the PSFEx/SExtractor programs and is ignored here")
        else:
            raise InputError(
                f"unknown option {k!r} for run_zogy; PSF estimation accepts {list(ESTIMATE_OPTIONS)}, "
                f"ZOGY itself {list(ZOGY_OPTIONS)}."
            )
    return est


def catalogue_scale(image_obj, template_obj, radius, log=None):
    """Template/science flux ratio ``F_r`` from two object tables.

    Objects are matched within ``radius`` pixels; flagged objects
    (deblended, saturated, at the edge, masked) are dropped; at least 6 pairs
    are needed. The zero point ``mag_t - mag_i`` is a Huber-weighted mean with
    weights from the magnitude errors.

    Returns
    -------
    (float, int)
        ``F_r`` and the number of pairs used.

    Raises
    ------
    FitError
        Fewer than 6 usable common objects.
    """
    from scipy.spatial import cKDTree

    log = log or (lambda *a: None)
    need = ("x", "y", "flux")
    for nm, t in (("image_obj", image_obj), ("template_obj", template_obj)):
        missing = [c for c in need if c not in t.colnames]
        if missing:
            raise InputError(f"{nm} lacks the column(s) {missing}.")

    def usable(t, flags):
        ok = np.isfinite(np.asarray(t["x"], float)) & np.isfinite(np.asarray(t["flux"], float))
        ok &= np.asarray(t["flux"], float) > 0
        if "flags" in t.colnames:
            ok &= (np.asarray(t["flags"], int) & flags) == 0
        return ok

    # Sparse bad pixels flag most objects as masked (0x100), crowding as
    # deblended (0x2): when too few remain they are accepted (the robust mean
    # takes care of the few biased fluxes).
    for flags in (_BAD_MATCH_FLAGS, 0x4 | 0x8):
        oi, ot = usable(image_obj, flags), usable(template_obj, flags)
        n = 0
        if oi.any() and ot.any():
            xi = np.c_[np.asarray(image_obj["x"], float)[oi], np.asarray(image_obj["y"], float)[oi]]
            xt = np.c_[np.asarray(template_obj["x"], float)[ot], np.asarray(template_obj["y"], float)[ot]]
            d, j = cKDTree(xt).query(xi, distance_upper_bound=radius)
            hit = np.isfinite(d)
            n = int(hit.sum())
        if n >= 20:
            break
    if n <= 5:
        raise FitError(
            f"the flux scale cannot be fitted: only {n} common unflagged objects in image and "
            f"template within {radius:.1f} px (need 6). Pass scale= explicitly."
        )
    fi = np.asarray(image_obj["flux"], float)[oi][hit]
    ft = np.asarray(template_obj["flux"], float)[ot][j[hit]]

    def relerr(t, sel):
        if "fluxerr" in t.colnames:
            fe = np.asarray(t["fluxerr"], float)[sel]
            fl = np.asarray(t["flux"], float)[sel]
            return np.where(np.isfinite(fe) & (fe > 0), fe / fl, 0.1)
        return np.full(sel.sum(), 0.1)

    ei = relerr(image_obj, oi)[hit]
    et = relerr(template_obj, ot)[j[hit]]
    zp = -2.5 * np.log10(ft / fi)
    sig = 1.0857 * np.hypot(ei, et) + 1e-3
    mu = float(np.median(zp))
    for _ in range(20):
        r = (zp - mu) / sig
        wt = np.where(np.abs(r) <= 1.345, 1.0, 1.345 / np.maximum(np.abs(r), 1e-12)) / sig ** 2
        new = float(np.sum(wt * zp) / np.sum(wt))
        if abs(new - mu) < 1e-7:
            mu = new
            break
        mu = new
    fr = 10 ** (-0.4 * mu)
    log(f"ZOGY: catalogue flux scale F_r={fr:.4f} from {n} common objects")
    return fr, n


def _good_regions(shape, objs, half, bad):
    """Squares of half-size ``half`` around objects with at most 5 % bad pixels."""
    good = np.zeros(shape, dtype=bool)
    h, w = shape
    if bad is not None and bad.any():
        cum = np.zeros((h + 1, w + 1), dtype=np.int64)
        np.cumsum(np.cumsum(bad, axis=0), axis=1, out=cum[1:, 1:])
    else:
        cum = None
    limit = 0.05 * (2 * half + 1) ** 2
    for x, y in objs:
        ix, iy = int(round(x)), int(round(y))
        x0, x1, y0, y1 = ix - half, ix + half + 1, iy - half, iy + half + 1
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            continue
        if cum is not None and cum[y1, x1] - cum[y0, x1] - cum[y1, x0] + cum[y0, x0] > limit:
            continue
        good[y0:y1, x0:x1] = True
    return good


def run(image, template, mask=None, template_mask=None, err=None, template_err=None,
        image_psf=None, template_psf=None, image_gain=None, template_gain=None,
        image_fwhm=None, template_fwhm=None, scale=None, psf_clean=0, dx=0.25, dy=0.25,
        nx=1, ny=None, overlap=50, fit_scale=True, fit_shift=True, good_regions=None,
        image_obj=None, template_obj=None, get_psf=False, get_Fpsf=False, nthreads=0,
        verbose=False, cancel=None, _result=None, **kwargs):
    """The body of :func:`diffgui.engine.api.run_zogy` (see there).

    ``_result`` may be a dict that receives per-tile details (scales, shifts,
    PSFs, objects) for the GUI and tests.
    """
    from diffgui.engine.common.noise import estimate_background
    from diffgui.engine.common.tiling import make_tiles
    from diffgui.engine.errors import validate_pair

    log = make_logger(verbose)
    est_kwargs = _split_kwargs(kwargs, log)
    background = kwargs.get("background", "mesh")
    if background not in BACKGROUND_MODES:
        raise InputError(f"background must be one of {list(BACKGROUND_MODES)}, got {background!r}.")
    flux_scale = kwargs.get("flux_scale", "kernel")
    if flux_scale not in FLUX_SCALE_MODES:
        raise InputError(f"flux_scale must be one of {list(FLUX_SCALE_MODES)}, got {flux_scale!r}.")
    vp = validate_pair(image, template, mask, template_mask, err, template_err)
    shape = vp.shape
    dx, dy, psf_clean, scale, nthreads = _checked_numbers(dx, dy, psf_clean, scale, nthreads)
    tiles = make_tiles(shape, nx, ny, overlap)
    info = _result if isinstance(_result, dict) else {}
    check_cancel(cancel)

    # ---- backgrounds and noise ---------------------------------------------------------
    bg_i = estimate_background(vp.image, vp.mask)
    bg_t = estimate_background(vp.template, vp.template_mask)
    N = vp.image - bg_i.back
    R = vp.template - bg_t.back
    err_n, sig_n = _noise(vp.err, vp.image, image_gain, vp.mask, bg_i, "science", log)
    err_r, sig_r = _noise(vp.template_err, vp.template, template_gain, vp.template_mask, bg_t,
                          "template", log)
    # PSF estimation sees the confusion of unresolved stars as noise (crowded fields).
    pe_n = _psf_noise(err_n, bg_i, sig_n) if image_psf is None else None
    pe_r = _psf_noise(err_r, bg_t, sig_r) if template_psf is None else None
    del bg_i, bg_t  # their back/rms maps are no longer needed (memory on big frames)
    corr_n, corr_r = _noise_correlations(kwargs.get("noise_correlation", False), N, R, err_n,
                                         err_r, vp, log)
    check_cancel(cancel)

    # ---- PSFs and objects ------------------------------------------------------------
    log.progress("ZOGY PSFs", 0.0)
    psf_i, obj_i = _psf_model(image_psf, N, vp.mask, pe_n, image_fwhm, image_gain, "image",
                              est_kwargs, cancel, verbose, log)
    log.progress("ZOGY PSFs", 0.5)
    check_cancel(cancel)
    psf_t, obj_t = _psf_model(template_psf, R, vp.template_mask, pe_r, template_fwhm,
                              template_gain, "template", est_kwargs, cancel, verbose, log)
    image_obj = obj_i if image_obj is None else image_obj
    template_obj = obj_t if template_obj is None else template_obj
    fwhm = max(float(psf_i["fwhm"]), float(psf_t["fwhm"]))
    info.update(image_psf=psf_i, template_psf=psf_t, image_obj=image_obj, template_obj=template_obj)
    log.progress("ZOGY PSFs", 1.0)
    if kwargs.get("cosmics", True):
        vp = _mask_cosmics(vp, N, R, err_n, err_r, psf_i, psf_t, info, log)

    # ---- flux scale and fit regions ------------------------------------------------
    from_catalogue = scale is None and image_obj is not None and template_obj is not None
    if scale is None:
        scale = _starting_scale(image_obj, template_obj, fwhm, fit_scale, log)
    bad = vp.mask | vp.template_mask
    fit_region = None
    if fit_scale or fit_shift:
        fit_region = _fit_region(good_regions, image_obj, shape, fwhm, bad)
    tile_fit_scale = fit_scale
    if fit_scale and flux_scale == "kernel":
        kscale = _kernel_scale(N, R, bad, err_n, err_r, fit_region, psf_i, psf_t, scale,
                               from_catalogue, log)
        if kscale is not None:
            scale, tile_fit_scale = kscale, False

    # ---- tiles ---------------------------------------------------------------------
    keys = ("D", "S_corr", "Fpsf", "Fpsf_err") if get_Fpsf else ("D", "S_corr")
    # One tile: its results are the outputs (no stitching copies).
    outs = {} if len(tiles) == 1 else {k: np.zeros(shape) for k in keys}
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    central = min(tiles, key=lambda t: (t.center[0] - cx) ** 2 + (t.center[1] - cy) ** 2)
    P_D = None
    info["tiles"] = []
    log.progress("ZOGY tiles", 0.0)
    for tile in tiles:
        check_cancel(cancel)
        res = _subtract_tile(tile, len(tiles), N, R, err_n, err_r, vp, bad, psf_i, psf_t,
                             fit_region, psf_clean, dict(
                                 sigma_n=sig_n, sigma_r=sig_r, scale=scale, fit_scale=tile_fit_scale,
                                 fit_shift=fit_shift, dx=dx, dy=dy,
                                 get_psf=get_psf and tile is central, get_Fpsf=get_Fpsf,
                                 corr_n=corr_n, corr_r=corr_r, nthreads=nthreads, cancel=cancel,
                                 verbose=verbose, background=background), log)
        _check_scale(res.scale, scale, tile_fit_scale and from_catalogue, tile, len(tiles))
        for k in keys:
            if len(tiles) == 1:
                outs[k] = getattr(res, k)
            else:
                outs[k][tile.inner] = getattr(res, k)[tile.inner_local]
        if tile is central:
            P_D = res.P_D
        info["tiles"].append({"inner": tile.inner, "outer": tile.outer, "scale": res.scale,
                              "shift": res.shift, "fit": res.fit})
        log.progress("ZOGY tiles", len(info["tiles"]) / len(tiles))
    out = [outs["D"], outs["S_corr"]]
    if get_psf:
        out.append(P_D)
    if get_Fpsf:
        out += [outs["Fpsf"], outs["Fpsf_err"]]
    return out


def _check_scale(fitted, start, check, tile, ntiles):
    """Refuse a fitted flux scale more than a factor 2 from the matched stars' flux
    ratio ``start`` (``check`` False: nothing to compare with): a wrong PSF or
    unmasked defects."""
    if check and not 0.5 <= fitted / start <= 2.0:
        where = f" in tile {tile.index + 1}" if ntiles > 1 else ""
        raise FitError(
            f"implausible flux scale{where}: the fit gives F_r = {fitted:.4g} but the matched "
            f"stars give {start:.4g}; the PSFs or unmasked bad pixels are probably wrong. "
            "Check the masks, pass the PSFs, or pass scale= with fit_scale=False."
        )


def _checked_numbers(dx, dy, psf_clean, scale, nthreads):
    """Validated ``dx``, ``dy``, ``psf_clean``, ``scale`` and ``nthreads``."""
    dx = _positive_float("dx", dx)
    dy = _positive_float("dy", dy)
    psf_clean = _positive_float("psf_clean", psf_clean or 0)
    if psf_clean >= 1:
        raise InputError(f"psf_clean must be in [0, 1), got {psf_clean}.")
    if scale is not None:
        scale = _positive_float("scale", scale, allow_zero=False)
    try:
        nthreads = int(nthreads or 0)
    except (TypeError, ValueError):
        raise InputError(f"nthreads must be an integer, got {nthreads!r}.") from None
    return dx, dy, psf_clean, scale, nthreads


def _noise(e, img, gain, m, bg, name, log):
    """The noise map (given, or built from the background and gain) and the
    background noise ``sigma`` of ZOGY's equations.

    ``sigma`` is the measured pixel-to-pixel noise of the faintest pixels
    (:func:`~diffgui.engine.common.noise.measure_pixel_noise`), not the sep
    background RMS, which in crowded fields holds the confusion of unresolved
    stars (3-4 times the pixel noise on the pyDIA bulge frames); the median
    of the map when that cannot be measured.
    """
    from diffgui.engine.common.noise import build_noise_map, measure_pixel_noise

    if not isinstance(e, np.ndarray):
        e = build_noise_map(img, gain=gain, mask=m, background=bg)
        log(f"ZOGY: {name} noise map built from the "
            + (f"counts and gain {gain}" if gain else "background RMS (no gain)"))
    sig, _ = measure_pixel_noise(img, m)
    if not (np.isfinite(sig) and sig > 0):
        sig = float(np.median(e[~m])) if (~m).any() else float(np.median(e))
    return e, float(sig)


def _noise_correlations(corr, N, R, err_n, err_r, vp, log):
    """Noise-correlation kernels of science and template from run_zogy's
    ``noise_correlation`` option (False/None: white noise; 'auto'/True: measured)."""
    if corr is None or corr is False:
        return None, None
    if isinstance(corr, str) or corr is True:
        if corr not in ("auto", True):
            raise InputError(f"noise_correlation must be 'auto', False or (kernel, kernel), got {corr!r}.")
        corr_n = estimate_noise_correlation(N, err_n, vp.mask)
        corr_r = estimate_noise_correlation(R, err_r, vp.template_mask)
        for nm, c in (("science", corr_n), ("template", corr_r)):
            if c is not None:
                r = c.shape[0] // 2
                log(f"ZOGY: {nm} noise is correlated (lag-1 correlation "
                    f"{c[r, r + 1]:.2f}, {c[r + 1, r]:.2f}): whitening it")
        return corr_n, corr_r
    try:
        corr_n, corr_r = (None if c is None else prepare_corr(c) for c in corr)
    except (TypeError, ValueError):
        raise InputError("noise_correlation must be 'auto', False or a pair of odd kernels.") from None
    return corr_n, corr_r


def _kernel_scale(N, R, bad, err_n, err_r, region, psf_i, psf_t, start, check, log):
    """F_r from a matching kernel's sum, checked against the catalogue's ``start``
    (None: too few pixels for the kernel)."""
    from diffgui.engine.zogy.kernel_scale import kernel_flux_scale, kernel_half_size, wing_radius

    fn, fr = float(psf_i["fwhm"]), float(psf_t["fwhm"])
    half = kernel_half_size(fn, fr)
    scale = kernel_flux_scale(N, R, bad, err_n, err_r, region, half, start, log,
                              convolve="template" if fr <= fn else "science",
                              wing=wing_radius(fn, fr, half))
    if scale is not None:
        _check_scale(scale, start, check, None, 1)
    return scale


def _mask_cosmics(vp, N, R, err_n, err_r, psf_i, psf_t, info, log):
    """``vp`` with pixels much sharper than each image's PSF (cosmic rays, hot
    pixels) added to its masks (run_zogy's ``cosmics`` option, default True)."""
    from diffgui.engine.zogy.cosmics import sharp_pixels

    cr_n = sharp_pixels(N, err_n, vp.mask, float(psf_i["fwhm"]))
    cr_r = sharp_pixels(R, err_r, vp.template_mask, float(psf_t["fwhm"]))
    info.update(image_cosmics=cr_n, template_cosmics=cr_r)
    if not (cr_n.any() or cr_r.any()):
        return vp
    log(f"ZOGY: {int(cr_n.sum())} science and {int(cr_r.sum())} template pixels sharper than "
        "the PSF (cosmic rays, hot pixels) masked")
    from dataclasses import replace

    return replace(vp, mask=vp.mask | cr_n, template_mask=vp.template_mask | cr_r)


def _psf_noise(err, bg, sigma):
    """Noise map for PSF estimation: ``err`` with the confusion noise of the field added.

    ``err`` holds the pixel noise (Poisson and read noise); in crowded fields the
    sep background RMS ``bg.rms`` also holds the light of unresolved stars, which
    is noise for a PSF stack: it sets which detections are significant stars,
    how far neighbours are masked and how the stars are weighted. Its excess over
    the pixel noise ``sigma`` is added in quadrature (nothing in sparse fields).
    With the pixel noise alone, the crowded pyDIA frames gave twice the
    detections, kept 12-23 instead of 60-90 PSF stars and PSFs with too much
    light in the wings (S_corr robust std 1.8 instead of 1.1 on 0130_vs_0178).
    """
    conf2 = np.asarray(bg.rms, dtype=np.float64) ** 2
    conf2 -= sigma * sigma
    np.maximum(conf2, 0.0, out=conf2)
    conf2 += np.asarray(err, dtype=np.float64) ** 2
    return np.sqrt(conf2, out=conf2)


def _psf_model(given, img, m, e, fwhm, gain, name, est_kwargs, cancel, verbose, log):
    """``(psf, objects)``: the given PSF (no objects) or one estimated from the stars."""
    from diffgui.engine.psf import as_psf, estimate_psf

    if given is not None:
        return as_psf(given, f"{name}_psf"), None
    log(f"ZOGY: estimating the {name} PSF from its stars")
    return estimate_psf(img, mask=m, err=e, fwhm=fwhm, gain=gain, subtract_background=False,
                        get_obj=True, cancel=cancel, verbose=verbose, **est_kwargs)


def _starting_scale(image_obj, template_obj, fwhm, fit_scale, log):
    """F_r from the matched catalogues, or 1 without object lists."""
    if image_obj is not None and template_obj is not None:
        scale, _ = catalogue_scale(image_obj, template_obj, max(1.0, 0.5 * fwhm), log)
        return scale
    log("ZOGY: no scale and no object lists: starting from F_r = 1"
        + (" (fitted from the images)" if fit_scale else ""))
    return 1.0


def _fit_region(good_regions, image_obj, shape, fwhm, bad):
    """Pixels for the scale/shift fit: ``good_regions``, or squares around the
    unsaturated image objects (None: every good pixel)."""
    if good_regions is not None:
        as_good = np.asarray(good_regions)
        if as_good.shape != shape:
            raise InputError(f"good_regions has shape {as_good.shape}, the image {shape}.")
        return as_good.astype(bool)
    if image_obj is not None and len(image_obj):
        xy = np.c_[np.asarray(image_obj["x"], float), np.asarray(image_obj["y"], float)]
        if "flags" in image_obj.colnames:
            xy = xy[(np.asarray(image_obj["flags"], int) & 0x4) == 0]
        fit_region = _good_regions(shape, xy, int(3 * fwhm), bad)
        if fit_region.any():
            return fit_region
    return None


def _subtract_tile(tile, ntiles, N, R, err_n, err_r, vp, bad, psf_i, psf_t, fit_region,
                   psf_clean, options, log):
    """:func:`zogy_subtract` on one tile with the PSFs at its centre."""
    from diffgui.engine.psf import get_psf_stamp

    o = tile.outer
    if bad[o].all():
        raise InputError(
            f"tile {tile.index} (x {o[1].start}-{o[1].stop}, y {o[0].start}-{o[0].stop}) is "
            "entirely masked: use fewer tiles or fix the masks."
        )
    tx, ty = tile.center
    pn = get_psf_stamp(psf_i, tx, ty, 0.0, 0.0)
    pr = get_psf_stamp(psf_t, tx, ty, 0.0, 0.0)
    fm = None
    if fit_region is not None:
        fm = fit_region[o]
        if np.count_nonzero(fm & ~bad[o]) < 100:
            fm = None
    if ntiles > 1:
        log(f"ZOGY: tile {tile.index + 1}/{ntiles} at x {o[1].start}-{o[1].stop}, "
            f"y {o[0].start}-{o[0].stop}")
    return zogy_subtract(N[o], R[o], prepare_psf(pn, "image PSF", psf_clean),
                         prepare_psf(pr, "template PSF", psf_clean), err_n[o], err_r[o],
                         vp.mask[o], vp.template_mask[o], fit_mask=fm, **options)
