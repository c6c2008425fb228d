"""Candidates on a subtraction result: finding, features, cutouts, labels and label files (no Qt).

Finding works on ZOGY's S_corr when the run has one, otherwise on the
difference image filtered with its PSF and normalised by its noise (the
matched-filter significance ``(D/sigma^2 * P) / sqrt(1/sigma^2 * P^2)``). Both
maps are rescaled by their robust sigma, so a threshold of 5 means 5 sigma of
the noise actually present. Peaks above the threshold are found on the positive
(brightening) and the negative (fading) side.

Every candidate carries the features a vetter uses: S/N, PSF-fit flux on the
difference, FWHM and ellipticity (Gaussian-weighted moments), distance to the
nearest template source, fractions of masked and negative pixels around it and
a dipole score (0 = one-signed, 1 = equal positive and negative lobes).

Labels and their files are in :mod:`diffgui.app.labels` (re-exported here).
Coordinates in tables are 0-based pixel centres.

Modules: :mod:`diffgui.app.candidate_maps` (PSF stamps, significance map, cutouts),
:mod:`diffgui.app.candidate_features` (peaks, features, the finding steps),
:mod:`diffgui.app.vetting_source` (:class:`VettingSource`, :class:`CandidateSet`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from astropy.table import Table

from diffgui.app.candidate_features import (FLAG_EDGE, FLAG_MASKED, _STATS_SIZE,  # noqa: F401
                                           _central, _checked_inputs, _features, _local_flux,
                                           _noise_scale, _pixel_noise, _radec, _search_fwhm,
                                           _signed_peaks, _subpixel, _template_distance)
from diffgui.app.candidate_maps import (_Prepared, _psf_stamp, cutout, estimate_fwhm,  # noqa: F401
                                        gaussian_psf, significance_map)
from diffgui.app.vetting_source import CUTOUT_ROLES, CandidateSet, VettingSource  # noqa: F401
from diffgui.engine.errors import InputError

from .labels import (LABELS, LabelStore, _float, _int, export_csv, export_regions, export_table,  # noqa: F401
                     labels_path_for, read_labels, user_data_dir, write_text_atomic)

__all__ = [
    "LABELS", "CUTOUT_ROLES", "COLUMNS", "CandidateSet", "VettingSource", "LabelStore",
    "find_candidates", "SEARCH_STAGES", "candidates_for_run", "candidates_for_run_isolated",
    "significance_map", "gaussian_psf", "cutout",
    "labels_path_for", "user_data_dir", "export_csv", "export_regions", "write_text_atomic",
]

#: Columns of a candidate table, in order.
COLUMNS = ("id", "x", "y", "sign", "snr", "flux", "fluxerr", "fwhm", "ellipticity",
           "dist_template", "masked_frac", "neg_frac", "dipole", "flags", "ra", "dec")
#: One-line meaning of each column (tooltips, CSV documentation).
COLUMN_HELP = {
    "id": "candidate number, by decreasing S/N",
    "x": "x of the peak, 0-based pixel", "y": "y of the peak, 0-based pixel",
    "sign": "+1 brightening (positive in the difference), -1 fading",
    "snr": "significance of the peak (S_corr, or matched-filter S/N of the difference)",
    "flux": "PSF-fit flux on the difference (signed)", "fluxerr": "error of flux",
    "fwhm": "FWHM of the difference source (px)", "ellipticity": "1 - b/a",
    "dist_template": "distance to the nearest template source (px); NaN = none within 30 px",
    "masked_frac": "fraction of masked or non-finite pixels in the box around it",
    "neg_frac": "fraction of pixels of the opposite sign in the box around it",
    "dipole": "0 = one-signed source, 1 = equal positive and negative lobes",
    "flags": "0x8 near the edge, 0x100 masked pixels nearby",
    "ra": "right ascension (deg)", "dec": "declination (deg)",
}


def find_candidates(diff, *, scorr=None, noise=None, psf=None, fwhm=None, image=None, template=None,
                    mask=None, template_mask=None, threshold: float = 5.0, signs=(1, -1),
                    edge: float = 3.0, template_objects=None, renormalise: Optional[bool] = None,
                    max_candidates: int = 5000, wcs=None, cutout_size: int = 31,
                    verbose=None, cancel=None) -> CandidateSet:
    """Find positive and negative candidates on a difference image.

    Parameters
    ----------
    diff : ndarray
        Difference image.
    scorr : ndarray, optional
        ZOGY's S_corr: when given, peaks are found on it instead of on the
        matched-filtered difference.
    noise : ndarray or float, optional
        Noise (sigma) of ``diff``; default: its background RMS.
    psf : ndarray, optional
        PSF stamp of the difference; default: a Gaussian of ``fwhm``.
    fwhm : float, optional
        PSF FWHM in pixels; default: measured on ``psf`` or ``image``, else 3.
    image, template : ndarray, optional
        Science and template images (for cutouts, the FWHM and template sources).
    mask, template_mask : ndarray of bool, optional
        True = bad pixel.
    threshold : float
        Detection threshold in sigma of the (renormalised) significance map.
    signs : tuple
        ``(1, -1)`` both, ``(1,)`` brightening only, ``(-1,)`` fading only.
    edge : float
        Peaks closer than this to the border are dropped.
    template_objects : astropy.table.Table, optional
        Template sources (x, y) for ``dist_template``; default: sources detected on
        ``template`` within 30 px of each candidate.
    renormalise : bool or None
        Divide the significance map by its robust sigma over source-free pixels. None
        (default): always for the matched-filter difference (noise maps usually ignore the
        correlated noise of a convolved image), and for S_corr only when that sigma is more
        than 15 % off 1 (ZOGY's S_corr is already in sigma; near stars its astrometric term
        damps it, which must not be mistaken for a wrong normalisation).
    max_candidates : int
        Keep at most this many (the most significant).
    wcs : astropy.wcs.WCS, optional
        For the ra/dec columns.
    verbose : bool or callable, optional
        As for the engine (:func:`diffgui.engine.errors.make_logger`): a callable with a
        ``progress(stage, fraction)`` method receives the search's stages
        (:data:`SEARCH_STAGES`), each rising from 0 to 1.
    cancel : callable, optional
        Polled between stages and chunks; True raises
        :class:`~diffgui.engine.errors.Cancelled`.

    Returns
    -------
    CandidateSet
    """
    from diffgui.engine.errors import check_cancel, make_logger

    log = make_logger(verbose)
    prog = log.progress
    prog(SEARCH_STAGES[0], 0.0)
    d, bad, m, tm = _checked_inputs(diff, mask, template_mask, threshold)
    shape = d.shape
    p = _psf_stamp(psf)
    # Statistics (FWHM, sky sigma) come from the central region: plenty of pixels and
    # stars, and cheap on 10k x 10k frames.
    cy, cx = _central(shape, _STATS_SIZE)
    preps = []
    for i, img in enumerate((image, template)):
        check_cancel(cancel)
        preps.append(None if img is None else _Prepared(np.asarray(img)[cy, cx],
                                                         None if (m, tm)[i] is None else (m, tm)[i][cy, cx]))
        prog(SEARCH_STAGES[0], 0.3 * (i + 1))
    fwhm = _search_fwhm(fwhm, p, preps[0])
    pix_noise, badn, weight = _pixel_noise(noise, d, bad)
    prog(SEARCH_STAGES[0], 1.0)
    check_cancel(cancel)
    det, scale, s0, detection, maps = _detection_map(d, scorr, pix_noise, p, bad, fwhm, renormalise,
                                                     (cy, cx), preps, prog)
    valid = ~bad & (det != 0)
    check_cancel(cancel)
    prog(SEARCH_STAGES[2], 0.0)
    ys, xs, sg, snr = _signed_peaks(det, valid, threshold, fwhm, signs, edge, max_candidates)
    prog(SEARCH_STAGES[2], 1.0)
    n = ys.size
    if detection == "diff":
        flux, fluxerr = maps[0][ys, xs], maps[1][ys, xs] * scale
    else:
        flux, fluxerr = _local_flux(d, weight, p if p is not None else gaussian_psf(fwhm), xs, ys)
    fx, fy, feats = _measure(d, det, bad, (pix_noise, badn), (xs, ys, sg), fwhm, prog, cancel)
    dist = _distances(template_objects, template, tm, fx, fy, prog, cancel)
    ra, dec = _radec(wcs, fx, fy)
    table = Table({
        "id": np.arange(1, n + 1, dtype=np.int32), "x": fx, "y": fy, "sign": sg.astype(np.int32),
        "snr": snr.astype(float), "flux": flux.astype(float), "fluxerr": fluxerr.astype(float),
        "fwhm": feats["fwhm"], "ellipticity": feats["ellipticity"],
        "dist_template": np.asarray(dist, float), "masked_frac": feats["masked_frac"],
        "neg_frac": feats["neg_frac"], "dipole": feats["dipole"], "flags": feats["flags"],
        "ra": ra, "dec": dec,
    })
    images = {"science": image, "template": template, "diff": d, "scorr": scorr}
    images = {k: v for k, v in images.items() if v is not None}
    meta = {"detection": detection, "threshold": float(threshold), "noise_scale": float(scale),
            "sky_sigma": float(s0),
            "fwhm": fwhm, "shape": list(shape), "signs": [int(s) for s in signs]}
    table.meta.update(meta)
    return CandidateSet(table, images, meta, wcs, int(cutout_size))


#: The stages :func:`find_candidates` reports through ``verbose.progress(stage, fraction)``.
SEARCH_STAGES = ("preparing", "significance map", "peaks", "measuring", "template sources")
#: Progress reports per chunked stage (about; chunks hold at least _MIN_CHUNK candidates).
_CHUNKS = 20
_MIN_CHUNK = 16


def _chunks(n: int):
    """Slices cutting ``range(n)`` into about :data:`_CHUNKS` pieces."""
    size = max(_MIN_CHUNK, -(-n // _CHUNKS))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _detection_map(d, scorr, pix_noise, p, bad, fwhm, renormalise, central, preps, prog):
    """The (renormalised) detection map: ``(det, scale, sky sigma, detection, (flux, fluxerr))``."""
    from diffgui.engine.errors import as_image

    stage = SEARCH_STAGES[1]
    prog(stage, 0.0)
    maps = (None, None)
    if scorr is not None:
        s = as_image(scorr, "S_corr")
        if s.shape != d.shape:
            raise InputError(f"S_corr has shape {s.shape} but the difference has shape {d.shape}")
        det = np.where(bad | ~np.isfinite(s), 0.0, s)
        detection = "scorr"
    else:
        det, flux_map, fluxerr_map = significance_map(d, pix_noise, p, bad, fwhm=fwhm)
        maps = (flux_map, fluxerr_map)
        detection = "diff"
    prog(stage, 0.8)
    valid = ~bad & (det != 0)
    scale = s0 = 1.0
    if renormalise or renormalise is None:
        scale, s0 = _noise_scale(det, valid, central, tuple(preps), fwhm, renormalise, detection)
    if scale != 1.0:
        det = det / scale
    prog(stage, 1.0)
    return det, scale, s0, detection, maps


def _measure(d, det, bad, noises, peaks, fwhm, prog, cancel):
    """Sub-pixel positions and features of the peaks, in chunks: ``(fx, fy, features)``."""
    from diffgui.engine.errors import check_cancel

    pix_noise, badn = noises
    xs, ys, sg = peaks
    n = ys.size
    fx, fy = np.empty(n), np.empty(n)
    parts = []
    prog(SEARCH_STAGES[3], 0.0)
    for sl in _chunks(n):
        check_cancel(cancel)
        cy, cx, cs = ys[sl], xs[sl], sg[sl]
        for sign in (1, -1):
            sel = cs == sign
            if sel.any():
                px, py = _subpixel(det if sign > 0 else -det, cy[sel], cx[sel])
                fx[sl][sel], fy[sl][sel] = px, py
        parts.append(_features(d, bad, pix_noise, badn, cx, cy, cs, fx[sl], fy[sl], fwhm))
        prog(SEARCH_STAGES[3], sl.stop / n)
    if n == 0:
        prog(SEARCH_STAGES[3], 1.0)
    if parts:
        feats = {k: np.concatenate([f[k] for f in parts]) for k in parts[0]}
    else:
        feats = _features(d, bad, pix_noise, badn, xs, ys, sg, fx, fy, fwhm)
    return fx, fy, feats


def _distances(template_objects, template, tm, fx, fy, prog, cancel):
    """Distance to the nearest template source, in chunks when sources are detected per stamp."""
    from diffgui.engine.errors import check_cancel

    stage = SEARCH_STAGES[4]
    prog(stage, 0.0)
    n = fx.size
    if template_objects is not None or template is None or n == 0:
        dist = _template_distance(template_objects, template, tm, fx, fy)
        prog(stage, 1.0)
        return dist
    dist = np.full(n, np.nan)
    for sl in _chunks(n):
        check_cancel(cancel)
        dist[sl] = _template_distance(None, template, tm, fx[sl], fy[sl])
        prog(stage, sl.stop / n)
    return dist


def _run_inputs(run, pair, kwargs) -> tuple:
    """The difference and the :func:`find_candidates` keywords for a run of ``pair``."""
    res = run.results if hasattr(run, "results") else dict(run)
    diff = res.get("diff")
    if diff is None:
        raise InputError("this run has no difference image: run a subtraction first.")
    noise = res.get("noise")
    if noise is None and isinstance(pair.err, np.ndarray) and isinstance(pair.template_err, np.ndarray):
        noise = np.hypot(pair.err, pair.template_err)
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != np.shape(diff):
            noise = None
    psf = res.get("psf")
    if psf is not None and np.ndim(psf) == 2 and np.shape(psf) == np.shape(diff):
        psf = None
    kw = dict(scorr=res.get("scorr"), noise=noise, psf=psf, image=pair.image, template=pair.template,
              mask=pair.mask, template_mask=pair.template_mask, wcs=pair.wcs)
    kw.update(kwargs)
    return diff, kw


def _named(cset: CandidateSet, run, pair) -> CandidateSet:
    cset.meta["method"] = getattr(run, "method", "")
    cset.title = f"candidates on {getattr(pair, 'name', 'pair')}"
    return cset


def candidates_for_run(run, pair, **kwargs) -> CandidateSet:
    """:func:`find_candidates` on a finished :class:`~diffgui.app.run.Run` of ``pair``.

    Uses the run's S_corr (ZOGY) or its difference with the run's noise map,
    else the pair's noise maps in quadrature; keyword arguments (``verbose`` and
    ``cancel`` included) are passed on.
    """
    diff, kw = _run_inputs(run, pair, kwargs)
    return _named(find_candidates(diff, **kw), run, pair)


_IMAGE_ARGS = ("scorr", "noise", "image", "template", "mask", "template_mask")


def _table_and_meta(diff, **kw) -> tuple:
    """Child-process body of :func:`candidates_for_run_isolated`: only the table travels back."""
    cset = find_candidates(diff, **kw)
    return cset.table, cset.meta


def candidates_for_run_isolated(run, pair, *, cancel=None, verbose=None, **kwargs) -> CandidateSet:
    """:func:`candidates_for_run` in a child process (:func:`diffgui.app.isolated.call_isolated`).

    The search runs ``sep``, which holds the GIL for up to a second on large images; in
    a child it cannot stall the caller's other threads (the GUI's event loop). The arrays
    go through shared memory, the table comes back, and the cutouts are taken from the
    caller's own arrays. ``cancel`` (callable): when it returns True the child is killed
    and :class:`~diffgui.engine.errors.Cancelled` raised. ``verbose``: as for
    :func:`find_candidates`; the child's log lines and ``progress(stage, fraction)``
    reports reach it in the calling thread.
    """
    from diffgui.engine.errors import as_image, make_logger

    from .isolated import call_isolated

    relay = make_logger(verbose) if verbose else None
    diff, kw = _run_inputs(run, pair, kwargs)
    arrays = {"diff": diff}
    for key in _IMAGE_ARGS:
        val = kw.get(key)
        if isinstance(val, np.ndarray) and val.ndim == 2:
            arrays[key] = kw.pop(key)
    wcs = kw.pop("wcs", None)  # ra/dec are added here: a WCS need not be picklable
    table, meta = call_isolated(_table_and_meta, arrays, kw, cancel=cancel, verbose=relay,
                                name="diffgui-candidates")
    if wcs is not None and len(table):
        table["ra"], table["dec"] = _radec(wcs, np.asarray(table["x"], float), np.asarray(table["y"], float))
    images = {"science": arrays.get("image", kw.get("image")), "template": arrays.get("template", kw.get("template")),
              "diff": as_image(diff, "difference image"), "scorr": arrays.get("scorr", kw.get("scorr"))}
    images = {k: v for k, v in images.items() if v is not None}
    cset = CandidateSet(table, images, meta, wcs, int(kw.get("cutout_size", 31)))
    return _named(cset, run, pair)
