"""The KB13475 light curve from a ``bench_series`` run: position, smoothness, independent check.

    nice python -m bench.bench_lightcurve SERIES_OUT [--raw-check] [--json J]

``SERIES_OUT`` is the ``--out`` folder of ``bench.bench_series`` (results in ``w2/`` or
``w1/``). Steps:

1. The event's position: the template catalogue's centroid of the event (a blend in this
   crowded field) is refined on the differences where the event is significant
   (:func:`~diffgui.engine.common.photometry.refine_position`); the light curves of the
   event and of the constant star are measured again there (``lc-event-refined.ecsv``,
   ``lc-constant-refined.ecsv`` in ``SERIES_OUT``).
2. The acceptance's figure: reduced chi^2 about a smooth curve whose shortest timescale is
   one day (:func:`smooth_chi2`: weighted least-squares cubic B-spline with knots one day
   apart over the whole series), with the chi^2 of each night; the constant star about
   its weighted mean.
3. ``--raw-check``: the event measured without any subtraction, on the raw frames: its
   12-px aperture flux over the median flux of 40 comparison stars of similar brightness
   (positions through the star-matching transform), fitted linearly against the
   difference flux; shows whether a feature of the light curve is in the data.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from bench.bench_series import DATA, _load, positions


def smooth_chi2(t, f, e, timescale: float = 1.0):
    """Reduced chi^2 of ``f`` about the best cubic B-spline with knots ``timescale`` days apart.

    Basis functions without data are dropped; dof = points - rank of the design matrix.

    Returns
    -------
    chi2/dof, dof, model (at ``t``), {night: (points, chi2)} with nights split at HJD .2
    """
    from scipy.interpolate import BSpline

    t, f, e = (np.asarray(v, float) for v in (t, f, e))
    k = 3
    inner = np.arange(t.min() - 1e-6, t.max() + timescale, timescale)
    knots = np.concatenate([[inner[0]] * k, inner, [inner[-1]] * k])
    a = BSpline.design_matrix(t, knots, k).toarray()
    a = a[:, a.any(axis=0)]
    sol, *_ = np.linalg.lstsq(a / e[:, None], f / e, rcond=1e-10)
    model = a @ sol
    r2 = ((f - model) / e) ** 2
    dof = len(t) - int(np.linalg.matrix_rank(a / e[:, None]))
    night = np.floor(t - 0.2).astype(int)
    per_night = {int(n): (int((night == n).sum()), float(r2[night == n].sum())) for n in np.unique(night)}
    return float(r2.sum() / max(dof, 1)), dof, model, per_night


def _frames_for_refinement(lc, n=20):
    z = np.abs(np.asarray(lc["flux"], float) / np.asarray(lc["flux_err"], float))
    z[~np.isfinite(z)] = 0
    return [lc["file"][i] for i in np.argsort(-z)[:n]]


def refine_event(files, x, y):
    """Refine ``(x, y)`` on the differences ``files`` (their own PSF, as the light curve uses)."""
    from astropy.io import fits

    from diffgui.engine.common.photometry import refine_position, stack_psf

    frames = []
    for p in files:
        with fits.open(p) as h:
            d = h["DIFF"].data.astype(float)
            s = h["NOISE"].data.astype(float)
            c = h["CONVOLVED"].data.astype(float)
        m = ~np.isfinite(d) | ~np.isfinite(s) | (np.abs(d) <= 1e-29)
        frames.append((d, s, stack_psf(c, mask=m), m))
    return refine_position(frames, x, y)


def raw_check(template, event_xy, lc):
    """Aperture flux of the event / comparison stars on the raw frames against the difference flux."""
    import sep

    from diffgui.engine.common.detection import detect_objects
    from diffgui.engine.common.registration import find_transform

    d = os.path.abspath(DATA)
    t = _load(d, template)
    cat = detect_objects(t, mask=t >= 65000, thresh=5)
    xy = np.column_stack([cat["x"], cat["y"]])
    fl = np.asarray(cat["flux"])
    fe = fl[np.argmin(np.hypot(*(xy - event_xy).T))]
    ok = ((np.asarray(cat["flags"]) & 0x10e) == 0) & (fl > 0.5 * fe) & (fl < 4 * fe)
    ok &= np.all((xy > 110) & (xy < 400), axis=1) & (np.hypot(*(xy - event_xy).T) > 20)
    comp = xy[ok][:40]
    rows = []
    for name, flux in zip(lc["file"], lc["flux"]):
        frame = os.path.basename(name).replace("-diff.fits", ".fits")
        img = _load(d, frame)
        tr = find_transform(img, t, mask=img >= 65000, template_mask=t >= 65000)
        ex, ey = tr.apply(*event_xy)
        cx, cy = tr.apply(comp[:, 0], comp[:, 1])
        sub = img - sep.Background(np.ascontiguousarray(img), mask=img >= 65000, bw=64, bh=64).back()
        f_ev = sep.sum_circle(sub, [ex], [ey], 12.0)[0][0]
        f_c = np.median(sep.sum_circle(sub, cx, cy, 12.0)[0])
        iy, ix = int(round(float(ey))), int(round(float(ex)))
        rows.append((frame, float(flux), float(f_ev / f_c), float(img[iy - 6:iy + 7, ix - 6:ix + 7].max())))
    diff = np.array([r[1] for r in rows])
    rel = np.array([r[2] for r in rows])
    a = np.column_stack([diff, np.ones_like(diff)])
    sol, *_ = np.linalg.lstsq(a, rel, rcond=None)
    resid = (rel - a @ sol) / sol[0]  # in difference-flux units
    return {"rows": rows, "slope": float(sol[0]), "offset": float(sol[1]),
            "scatter_flux": float(1.4826 * np.median(np.abs(resid - np.median(resid)))),
            "max_peak_adu": float(max(r[3] for r in rows))}


def main(argv=None):
    from astropy.table import Table

    from diffgui.app import lightcurve

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--template", default="AKB13475I0020.fits")
    p.add_argument("--raw-check", action="store_true")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    d = os.path.abspath(DATA)
    sub = [s for s in ("w2", "w1") if os.path.isdir(os.path.join(args.folder, s))]
    files = sorted(glob.glob(os.path.join(args.folder, sub[0], "*-diff.fits")))
    (ex, ey, _), (cx, cy, _) = positions(d, args.template)
    first = lightcurve.light_curve(files, ex, ey)
    ref = refine_event(_frames_for_refinement(first), ex, ey)
    print(f"event position ({ex:.3f}, {ey:.3f}) -> ({ref.x:.3f}, {ref.y:.3f}) on {ref.n_frames} differences "
          f"(summed chi2 {ref.chi2_start:.0f} -> {ref.chi2_best:.0f})", flush=True)
    lc_e, lc_c = lightcurve.light_curves(files, [(ref.x, ref.y), (cx, cy)], workers=args.workers)
    for lc, name in ((lc_e, "lc-event-refined.ecsv"), (lc_c, "lc-constant-refined.ecsv")):
        lightcurve.write_light_curve(lc, os.path.join(args.folder, name), overwrite=True)
    out = {"event_xy_catalogue": [ex, ey], "event_xy_refined": [ref.x, ref.y], "constant_xy": [cx, cy]}
    for label, lc in (("catalogue position", first), ("refined position", lc_e)):
        t, f, e = (np.asarray(lc[c], float) for c in ("time", "flux", "flux_err"))
        g = np.isfinite(f) & np.isfinite(e) & (e > 0)
        chi, dof, _, nights = smooth_chi2(t[g], f[g], e[g])
        worst = max(nights, key=lambda n: nights[n][1])
        keep = np.floor(t[g] - 0.2).astype(int) != worst  # the same fit without that night
        rest, rest_dof, _, _ = smooth_chi2(t[g][keep], f[g][keep], e[g][keep])
        chi_fit = np.asarray(lc["chi2"], float) / np.maximum(np.asarray(lc["npix"], float) - 2, 1)
        print(f"event at the {label}: chi2/dof about a smooth curve (1-day B-spline) {chi:.2f} ({dof} dof, "
              f"{g.sum()} points); night {worst} ({nights[worst][0]} points) holds chi2 {nights[worst][1]:.0f}, "
              f"without that night {rest:.2f} ({rest_dof} dof); PSF-fit chi2/pixel median {np.nanmedian(chi_fit):.2f}, "
              f"max {np.nanmax(chi_fit):.1f}; median flux_err {np.median(e[g]):.0f}", flush=True)
        out[label] = {"smooth_chi2": chi, "dof": dof, "per_night": nights, "worst_night": worst,
                      "smooth_chi2_without_worst_night": rest, "dof_without_worst_night": rest_dof, "fit_chi2_per_pixel_median": float(np.nanmedian(chi_fit))}
    tc, fc, ec = (np.asarray(lc_c[c], float) for c in ("time", "flux", "flux_err"))
    g = np.isfinite(fc) & np.isfinite(ec) & (ec > 0)
    w = 1 / ec[g] ** 2
    chi_c = float(np.sum((fc[g] - np.sum(w * fc[g]) / np.sum(w)) ** 2 * w) / (g.sum() - 1))
    print(f"constant star: chi2/dof about its mean {chi_c:.2f} ({g.sum()} points)")
    out["constant_chi2"] = chi_c
    if args.raw_check:
        rc = raw_check(args.template, np.array([ref.x, ref.y]), lc_e)
        print(f"raw frames: aperture ratio = {rc['offset']:.3f} + {rc['slope']:.3e} x difference flux, scatter "
              f"{rc['scatter_flux']:.0f} counts (1.48 MAD); brightest pixel near the event {rc['max_peak_adu']:.0f} ADU")
        out["raw_check"] = rc
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
