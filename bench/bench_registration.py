"""Registration on the pyDIA frames: offsets against frames.json and an independent check,
and subtraction cleanliness after registration against the whole-pixel-aligned pairs.

    nice python -m bench.bench_registration [--json out.json]

1. For every frame: star-matching transform frame 0001 -> frame, its shift at the image
   centre compared with ``frames.json`` (whose sign is template minus science), and the
   offset left after resampling measured by FFT cross-correlation
   (:func:`~diffgui.engine.common.alignment.measure_offset`, at ~0 lag where its peak fit
   is unbiased).
   The same offset left after resampling with frames.json's shift, and for the frames
   farthest from frames.json (and, as a control, the closest) a subtraction with each
   shift (``--compare-json N``): which of the two is biased.
2. For the three pairs of ``pairs/`` (aligned by whole-pixel crops, residual < 0.05 px):
   native HOTPANTS on the crops, and on the raw frames registered here; robust std of
   diff/noise of both over the common pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from bench.bench_series import DATA, _load


def _robust(a):
    a = a[np.isfinite(a)]
    return float(1.4826 * np.median(np.abs(a - np.median(a))))


def offsets(d, fr):
    from diffgui.engine.common.alignment import measure_offset
    from diffgui.engine.common.registration import Transform, find_transform, resample

    t = _load(d, "AKB13475I0001.fits")
    rows = []
    for e in fr:
        img = _load(d, e["f"])
        try:
            tr = find_transform(img, t, mask=img >= 65000, template_mask=t >= 65000)
        except Exception as exc:
            rows.append({"f": e["f"], "peak": e["peak"], "error": str(exc)})
            continue
        c = np.array([255.5, 255.5])
        sh = np.array(tr.apply(*c)) - c
        out, bad, _ = resample(img, tr, t.shape, mask=img >= 65000)
        left = measure_offset(out, t, mask=bad, template_mask=t >= 65000, rotation=False)
        # the same check after resampling with frames.json's own shift (sign: template minus science)
        out_j, bad_j, _ = resample(img, Transform.shift(-e["dx"], -e["dy"]), t.shape, mask=img >= 65000)
        left_j = measure_offset(out_j, t, mask=bad_j, template_mask=t >= 65000, rotation=False)
        rows.append({"f": e["f"], "peak": e["peak"], "fwhm": e["fwhm"], "json": [-e["dx"], -e["dy"]],
                     "stars": sh.tolist(), "dev_json": float(np.hypot(*(sh + [e["dx"], e["dy"]]))),
                     "left": float(np.hypot(left.dx, left.dy)), "left_peak": left.peak,
                     "left_json": [float(left_j.dx), float(left_j.dy)],
                     "n": tr.n_stars, "rms": tr.rms, "rot": tr.rotation})
    return rows


def json_bias(rows):
    """Is frames.json's shift or ours the biased one? Figures over the frames with peak >= 0.3."""
    good = [r for r in rows if "error" not in r and r["peak"] >= 0.3 and r["f"] != "AKB13475I0001.fits"]
    ours = np.array([r["stars"] for r in good])
    js = np.array([r["json"] for r in good])
    left_j = np.array([r["left_json"] for r in good])
    frac = ours - np.round(ours)
    err_json = js - ours
    return {"left_after_json_median": float(np.median(np.hypot(*left_j.T))),
            "left_after_json_max": float(np.hypot(*left_j.T).max()),
            # the offset left after resampling with frames.json's shift is ours minus frames.json's
            "corr_left_json_vs_ours_minus_json": [float(np.corrcoef(left_j[:, k], -err_json[:, k])[0, 1]) for k in (0, 1)],
            # pixel locking: frames.json's error anti-correlates with the sub-pixel fraction
            "corr_json_error_vs_fraction": [float(np.corrcoef(err_json[:, k], frac[:, k])[0, 1]) for k in (0, 1)],
            "mean_abs_fraction_json": float(np.abs(js - np.round(js)).mean()),
            "mean_abs_fraction_ours": float(np.abs(frac).mean())}


def json_cleanliness(d, names):
    """Native HOTPANTS against frame 0001 after resampling with our transform and with frames.json's
    shift: robust std of diff/noise (pixels 40 px from the edges) for each."""
    from diffgui.engine.api import run_hotpants
    from diffgui.engine.common.registration import Transform, register_image, resample

    fr = {e["f"]: e for e in json.load(open(os.path.join(d, "frames.json")))}
    t = _load(d, "AKB13475I0001.fits")
    out = []
    for name in names:
        img = _load(d, name)
        res = {"f": name}
        tr = register_image(img, t, mask=img >= 65000, template_mask=t >= 65000).transform
        for key, tt in (("ours", tr), ("json", Transform.shift(-fr[name]["dx"], -fr[name]["dy"]))):
            sci, bad, _ = resample(img, tt, t.shape, mask=img >= 65000)
            sci = np.where(bad, np.median(sci[~bad]), sci)
            diff, noise = run_hotpants(sci, t, mask=bad, template_mask=t >= 65000, err=True, template_err=True,
                                       get_noise=True, image_gain=1.9, template_gain=1.9, backend="native")
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where((noise > 0) & (np.abs(diff) > 1e-29) & ~bad, diff / noise, np.nan)
            res[key] = _robust(z[40:-40, 40:-40])
        out.append(res)
        print(f"{name}: robust std diff/noise, our shift {res['ours']:.3f}, frames.json's {res['json']:.3f}", flush=True)
    return out


def cleanliness(d):
    from diffgui.app.align import load_aligned_pair
    from diffgui.app.pair import load_pair
    from diffgui.app.presets import make_preset
    from diffgui.app.run import Run

    params = make_preset("hotpants", {"backend": "native"}).params
    pairs = json.load(open(os.path.join(d, "pairs", "pairs.json")))
    out = []
    for p in pairs:
        base = os.path.join(d, "pairs", p["pair"])
        crop = load_pair(base + "_sci.fits", base + "_ref.fits")
        raw, tr = load_aligned_pair(os.path.join(d, "frames", p["sci"].replace(".fits", ".fits.fz")),
                                    os.path.join(d, "frames", p["ref"].replace(".fits", ".fits.fz")))
        res = {}
        for name, pair in (("aligned_crop", crop), ("registered", raw)):
            run = Run(method="hotpants", params=dict(params))
            run.check_alignment = False
            run.execute(pair)
            z = run.results["diff"] / run.results["noise"]
            z[(run.results["noise"] <= 0) | (np.abs(run.results["diff"]) <= 1e-29)] = np.nan
            res[name] = _robust(z[30:-30, 30:-30])
        res["ratio"] = res["registered"] / res["aligned_crop"]
        res.update(pair=p["pair"], shift=tr.offset.tolist(), n_stars=tr.n_stars)
        out.append(res)
        print(f"{p['pair']}: robust std diff/noise aligned crop {res['aligned_crop']:.3f}, registered "
              f"{res['registered']:.3f} (ratio {res['ratio']:.3f}), shift {np.round(tr.offset, 3)}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the figures as JSON")
    p.add_argument("--skip-offsets", action="store_true")
    p.add_argument("--compare-json", type=int, default=6,
                   help="subtract the N frames farthest from frames.json (and N/3 closest) with both shifts")
    args = p.parse_args(argv)
    d = os.path.abspath(DATA)
    fr = json.load(open(os.path.join(d, "frames.json")))
    out = {}
    t0 = time.perf_counter()
    if not args.skip_offsets:
        rows = offsets(d, fr)
        ok = [r for r in rows if "error" not in r]
        good = [r for r in ok if r["peak"] >= 0.3]
        dev = np.array([r["dev_json"] for r in good])
        left = np.array([r["left"] for r in ok if r["left_peak"] >= 0.3])
        out["offsets"] = {"frames": len(rows), "failed": [r for r in rows if "error" in r],
                          "peak_ge_0.3": len(good), "dev_json_median": float(np.median(dev)),
                          "dev_json_max": float(dev.max()), "dev_json_le_0.1": int((dev <= 0.1).sum()),
                          "left_median": float(np.median(left)), "left_p95": float(np.percentile(left, 95)),
                          "left_max": float(left.max()), "rows": rows, "seconds": time.perf_counter() - t0}
        o = out["offsets"]
        print(f"{o['frames']} frames, {len(o['failed'])} failed; peak >= 0.3: {o['peak_ge_0.3']} frames, "
              f"|stars - frames.json| median {o['dev_json_median']:.3f} max {o['dev_json_max']:.3f} px, "
              f"{o['dev_json_le_0.1']} within 0.1 px; offset left after registration (xcorr) median "
              f"{o['left_median']:.3f}, p95 {o['left_p95']:.3f}, max {o['left_max']:.3f} px")
        out["json_bias"] = json_bias(rows)
        print("frames.json's bias:", json.dumps(out["json_bias"]))
        worst = sorted(good, key=lambda r: -r["dev_json"])[:args.compare_json]
        agree = sorted(good, key=lambda r: r["dev_json"])[:max(args.compare_json // 3, 1)]
        out["json_cleanliness"] = json_cleanliness(d, [r["f"] for r in worst + agree])
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1, default=float)
    out["cleanliness"] = cleanliness(d)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
