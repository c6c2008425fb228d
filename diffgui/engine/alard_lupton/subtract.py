"""The whole native subtraction: :func:`subtract` (regions, both directions, the
kernel fit, applying it) and its :class:`NativeResult`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from diffgui.engine.alard_lupton.apply import _apply_region
from diffgui.engine.alard_lupton.basis import Basis
from diffgui.engine.alard_lupton.fit import _clipped_stats, _DirectionFit
from diffgui.engine.alard_lupton.kernel import SpatialKernel
from diffgui.engine.alard_lupton.options import NATIVE_IGNORED, _hotpants_defaults, _resolve_options
from diffgui.engine.alard_lupton.regions import KernelRegion, hotpants_regions
from diffgui.engine.alard_lupton.stamps import _Side, _StampDesign, _find_candidates
from diffgui.engine.common.blas import single_thread_blas
from diffgui.engine.errors import FitError, InputError, as_image, as_mask, check_cancel, make_logger

# ---- the whole subtraction -----------------------------------------------------------------

@dataclass
class NativeResult:
    """Outputs of :func:`subtract`.

    ``diff``, ``convolved`` and ``noise`` follow HOTPANTS: bad output pixels
    hold the fill values ``fi`` / ``fin``; ``mask`` marks them (True = bad).
    """

    diff: np.ndarray
    convolved: Optional[np.ndarray]
    noise: np.ndarray
    mask: np.ndarray
    kernel: SpatialKernel
    header: object
    stamps: list


def subtract(image, template, *, mask=None, template_mask=None, err=None, template_err=None,
             options=None, stamp_xy=None, want_convolved=True, verbose=False, cancel=None,
             nthreads=0) -> NativeResult:
    """Subtract ``template`` from ``image`` with the Alard-Lupton method.

    Parameters
    ----------
    image, template : ndarray
        Aligned images of one shape.
    mask, template_mask : ndarray of bool, optional
        True = bad pixel. Non-finite pixels are always bad.
    err, template_err : ndarray, optional
        Noise (sigma) maps; without them the variance is HOTPANTS's model
        ``|data|/gain + (rdnoise/gain)^2`` from the ig/ir, tg/tr options.
    options : dict, optional
        HOTPANTS options by name (r, rss, ng, ko, bgo, nsx, nsy, nss, ft,
        sft, nft, ks, ssig, c, n, nrx, nry, il, iu, iuk, tl, tu, tuk, ig,
        ir, tg, tr, ip, tp, kfm, fi, fin, mous, afssc); missing ones take
        the executable's defaults.
    stamp_xy : ndarray (n, 2), optional
        0-based substamp centres to try first (HOTPANTS's -ssf).
    want_convolved : bool
        Also return the convolved image.
    verbose : bool or callable
    cancel : callable, optional
        Returns True to stop; raises :class:`~diffgui.engine.errors.Cancelled`.
    nthreads : int
        Threads (0: all cores, at most 2 tile workers).

    Returns
    -------
    NativeResult

    Raises
    ------
    FitError
        No usable stamps in a region (no stars, or everything flagged).
    """
    log = make_logger(verbose)
    opts = _resolve_options(options)
    defaults = _hotpants_defaults()
    ignored = [k for k in NATIVE_IGNORED if k != "v" and opts.get(k) != defaults.get(k)]
    if ignored:
        log(f"native backend: ignoring option(s) {', '.join(ignored)}")
    img = as_image(image, "image")
    tmpl = as_image(template, "template")
    if img.shape != tmpl.shape:
        raise InputError(f"image and template shapes differ: {img.shape} and {tmpl.shape}")
    shape = img.shape
    m_i = as_mask(mask, shape, "mask")
    m_t = as_mask(template_mask, shape, "template_mask")
    r, rss = int(opts["r"]), int(opts["rss"])
    if min(shape) < 2 * (rss + r) + 3:
        raise InputError(f"image {shape} is too small for r={r} and rss={rss}: "
                         f"needs at least {2 * (rss + r) + 3} pixels per side.")
    sideI = _Side("image", img, m_i, None if err is None else as_image(err, "err"),
                  opts["ig"], opts["ir"], opts["il"], opts["iu"], opts["iuk"], opts["ip"])
    sideT = _Side("template", tmpl, m_t,
                  None if template_err is None else as_image(template_err, "template_err"),
                  opts["tg"], opts["tr"], opts["tl"], opts["tu"], opts["tuk"], opts["tp"])
    for s in (sideI, sideT):
        frac = s.bad.mean()
        if frac > 0.5:
            log(f"WARNING: {100 * frac:.0f}% of the {s.name} pixels are flagged "
                f"(masked, non-finite or outside {s.name[0]}l={s.lower:g} .. {s.name[0]}u={s.upper:g})")
    basis = Basis(r, opts["ng"])
    design = _StampDesign(basis, rss)
    ko, bgo = int(opts["ko"]), int(opts["bgo"])
    direction = str(opts["c"]).lower()
    if stamp_xy is not None:
        stamp_xy = np.asarray(stamp_xy, dtype=float).reshape(-1, 2)
    regions_def = hotpants_regions(shape, int(opts["nrx"]), int(opts["nry"]),
                                   int(opts["nsx"]), int(opts["nsy"]), r, rss)
    log(f"native Alard-Lupton: {shape[1]}x{shape[0]}, r={r}, rss={rss}, ng={basis.ng()}, "
        f"{basis.n} basis functions, ko={ko}, bgo={bgo}, {len(regions_def)} region(s)")
    with single_thread_blas():
        regions, stamps_used = _fit_regions(regions_def, sideI, sideT, basis, design, opts,
                                            stamp_xy, log, cancel)
    kernel = SpatialKernel(basis, ko, bgo, regions, shape, photnorm=str(opts["n"]))
    check_cancel(cancel)
    diff = np.empty(shape)
    noise = np.empty(shape)
    convd = np.empty(shape) if want_convolved else None
    omask = np.zeros(shape, bool)
    for k, reg in enumerate(regions):
        check_cancel(cancel)
        conv, targ = (sideT, sideI) if reg.convolved == "TEMPLATE" else (sideI, sideT)
        _apply_region(kernel, k, conv, targ, (diff, noise, convd, omask), opts,
                      nthreads, want_convolved, cancel)
        log.progress("HOTPANTS regions", (k + 1) / len(regions))
    header = _native_header(kernel, opts)
    for k, reg in enumerate(regions):
        log(f"region {k}: convolved {reg.convolved}, kernel sum {reg.coeffs[0]:.4f}, "
            f"{reg.stats['nstamps']} stamps, X2NRM {reg.stats.get('x2nrm', float('nan')):.3f}")
    return NativeResult(diff, convd, noise, omask, kernel, header, stamps_used)


def _fit_regions(regions_def, sideI, sideT, basis, design, opts, stamp_xy, log, cancel):
    """Stamps, fit and direction choice for every region."""
    regions, stamps_used = [], []
    for k, (good, frame) in enumerate(regions_def):
        check_cancel(cancel)
        ft = float(opts["ft"])
        direction = str(opts["c"]).lower()
        detect = {"t": (sideT,), "i": (sideI,)}.get(direction, (sideT, sideI))
        cands = _find_candidates((sideT, sideI), (good, frame), opts, ft, stamp_xy, log, detect)
        ncells = len(cands)
        frac = sum(1 for c in cands if c) / max(ncells, 1)
        if frac < float(opts["nft"]) and float(opts["sft"]) < 1:
            ft *= float(opts["sft"])
            log(f"region {k}: only {100 * frac:.0f}% of the stamps have a star above "
                f"{opts['ft']} sigma; lowering the threshold to {ft:.2f} sigma")
            cands = _find_candidates((sideT, sideI), (good, frame), opts, ft, stamp_xy, log,
                                     detect)
        nfound = sum(1 for c in cands if c)
        if nfound == 0:
            raise FitError(_no_stamp_reason(k, sideI, sideT, ft, opts))
        log(f"region {k} [{good[0]}:{good[1]},{good[2]}:{good[3]}]: {nfound} of {ncells} "
            f"stamps have candidates ({sum(len(c) for c in cands)} substamps)")
        dirs = {"t": ["t"], "i": ["i"]}.get(direction, ["t", "i"])
        fits = {}
        for d in dirs:
            check_cancel(cancel)
            conv, targ = (sideT, sideI) if d == "t" else (sideI, sideT)
            fit = _DirectionFit(conv, targ, cands, frame, basis, design, opts, log, cancel).run()
            if fit is not None:
                fits[d] = fit
                log(f"  convolving {conv.name.upper()}: {len(fit.keys)} stamps, "
                    f"kernel sum {fit.theta[0]:.4f}, mean chi2/pixel {np.mean(fit.merit):.3f}")
            log.progress("HOTPANTS stamps", (k + (dirs.index(d) + 1) / len(dirs)) / len(regions_def))
        if not fits:
            raise FitError(f"region {k}: every stamp was rejected by the fit; "
                           "try more stamps (nsx/nsy), a lower ft, or larger r/rss.")
        if len(fits) == 2:
            common = sorted(set(fits["t"].keys) & set(fits["i"].keys))
            use = common if len(common) >= 3 else None
            mt = fits["t"].residual_metric(use)
            mi = fits["i"].residual_metric(use)
            best = "t" if mt <= mi else "i"
            log(f"  direction: residual/noise^2 {mt:.3f} convolving TEMPLATE, {mi:.3f} "
                f"convolving IMAGE -> {'TEMPLATE' if best == 't' else 'IMAGE'}")
        else:
            best = next(iter(fits))
        fit = fits[best]
        xy = np.array([fit.cache[kk]["xy"] for kk in fit.keys])
        mu, sd = _clipped_stats(fit.merit, float(opts["ssig"]))
        stats = {"nstamps": len(fit.keys), "sssig": mu, "ssscat": sd}
        regions.append(KernelRegion(good, frame, fit.theta,
                                    "TEMPLATE" if best == "t" else "IMAGE", stats))
        stamps_used.append(xy)
    return regions, stamps_used


def _no_stamp_reason(k, sideI, sideT, ft, opts):
    parts = []
    for s in (sideT, sideI):
        frac = float(s.bad.mean())
        if frac > 0.2:
            low = float(np.mean(s.data[::3, ::3] <= s.lower))
            why = f"{100 * frac:.0f}% of the {s.name} pixels are flagged"
            if low > 0.2:
                why += (f" ({100 * low:.0f}% at or below the lower threshold "
                        f"{s.name[0]}l={s.lower:g}: background-subtracted data needs a "
                        "negative lower threshold)")
            parts.append(why)
    if not parts:
        parts.append(f"no star peaks above {ft:.1f} sigma in both images "
                     "(no stars, or the images do not overlap)")
    return (f"no usable kernel stamps in region {k}: " + "; ".join(parts) +
            ". Check the thresholds (il/tl, iu/tu), the masks, and ft.")


def _native_header(kernel, opts):
    from astropy.io import fits

    h = fits.Header()
    h["SOFTNAME"] = ("diffgui", "The software that differenced this image")
    h["SOFTVERS"] = ("native Alard-Lupton", "HOTPANTS algorithm in numpy")
    for key, val in kernel.region_keywords().items():
        h[key] = val
    for k, reg in enumerate(kernel.regions):
        st = reg.stats
        h[f"SSSIG{k:02d}"] = (f"{st.get('sssig', 0):.4f}", "Average Figure of Merit across Stamps")
        h[f"SSSCAT{k:02d}"] = (f"{st.get('ssscat', 0):.4f}", "Stdev in Figure of Merit")
        h[f"X2NRM{k:02d}"] = (f"{st.get('x2nrm', float('nan')):.4f}", "1/N * SUM (diff/noise)^2")
        h[f"NX2NRM{k:02d}"] = (f"{st.get('nx2nrm', 0)}", "Number of pixels in X2NRM")
        h[f"DMEAN{k:02d}"] = (f"{st.get('dmean', 0):.4f}", "Mean of diff image; good pixels")
        h[f"DSIGE{k:02d}"] = (f"{st.get('dsige', 0):.4f}", "Stdev of diff image; good pixels")
        h[f"DSIG{k:02d}"] = (f"{st.get('dsig', 0):.4f}", "Mean of noise image; good pixels")
        h[f"NSTAMP{k:02d}"] = (int(st.get("nstamps", 0)), "Stamps used in the fit")
    h["PHOTNORM"] = (kernel.photnorm, "Direction of photometric normalization")
    h["NREGION"] = (len(kernel.regions), "Number of independent regions")
    h["MASKVAL"] = (float(opts["fi"]), "Value of Masked Pixels")
    h["NSTAMPS"] = (int(sum(reg.stats.get("nstamps", 0) for reg in kernel.regions)),
                    "Stamps used in the fit")
    th = kernel.to_table_hdu().header
    for key in ["NGAUSS"] + [k for k in th if k.startswith(("DGAUSS", "SGAUSS"))] + \
            ["FWKERN", "CKORDER", "BGORDER"]:
        h[key] = (th[key], th.comments[key])
    return h
