"""Candidate finding benchmark: recovery of injected transients and false positives per megapixel.

``python -m bench candidates --size 1024 --seeds 0 1 2 3 4`` simulates pairs with 30
transients (ideal S/N log-spaced over ``--snr 5 100``), subtracts them with the ideal
PSF-matched difference built from the truth and with every available method, finds
candidates at ``--threshold`` (5 sigma) and reports, summed over the seeds: transients
with ideal S/N >= 7 recovered (a candidate of the right sign within 2 px), candidates
matching no transient per megapixel, and the time of the finding step.
"""

from __future__ import annotations

import time

import numpy as np

from bench import register


def _args(p):
    p.add_argument("--size", type=int, default=1024, help="image side (default 1024)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--snr", type=float, nargs=2, default=[5.0, 100.0], help="ideal S/N range of the transients")
    p.add_argument("--threshold", type=float, default=5.0)
    p.add_argument("--methods", nargs="*", default=None, help="default: ideal and every available method")


def _ideal(sim):
    from scipy.signal import fftconvolve

    from diffgui.app.candidates import gaussian_psf

    t = sim.truth
    k = gaussian_psf(np.sqrt(t["image_fwhm"] ** 2 - t["template_fwhm"] ** 2))
    s = t["flux_scale"]
    diff = (sim.image - t["image_sky"]) - s * (fftconvolve(sim.template, k, mode="same") - t["template_sky"])
    noise = np.sqrt(sim.image_noise ** 2 + s ** 2 * fftconvolve(sim.template_noise ** 2, k * k, mode="same"))
    return {"diff": diff, "noise": noise}


def _match(table, tr, radius=2.0):
    from scipy.spatial import cKDTree

    if len(table) == 0:
        return np.zeros(len(tr), bool), 0
    tree = cKDTree(np.column_stack([np.asarray(table["x"]), np.asarray(table["y"])]))
    found = np.zeros(len(tr), bool)
    near = set()
    for i, r in enumerate(tr):
        for j in tree.query_ball_point([r["x"], r["y"]], radius):
            if int(table["sign"][j]) == int(np.sign(r["flux"])):
                found[i] = True
        near.update(tree.query_ball_point([r["x"], r["y"]], 2 * radius))
    return found, len(table) - len(near)


@register("candidates", help="transient recovery and false positives per megapixel of candidate finding",
          arguments=_args)
def run(args):
    from diffgui.app import methods as M
    from diffgui.app.candidates import candidates_for_run
    from diffgui.app.pair import Pair
    from diffgui.app.run import Run
    from diffgui.engine.simulation import simulate_pair

    names = args.methods if args.methods else ["ideal"] + M.available()
    stats = {m: {"found": 0, "strong": 0, "false": 0, "t_find": [], "t_run": []} for m in names}
    for seed in args.seeds:
        sim = simulate_pair(shape=(args.size, args.size), transients=30, transient_snr_range=tuple(args.snr),
                            seed=seed)
        pair = Pair(sim.image, sim.template, err=sim.image_noise, template_err=sim.template_noise)
        strong = np.asarray(sim.transients["ideal_snr"]) >= 7
        for m in names:
            t0 = time.perf_counter()
            run_ = _ideal(sim) if m == "ideal" else Run(m, {}).execute(pair)
            t1 = time.perf_counter()
            cset = candidates_for_run(run_, pair, threshold=args.threshold)
            t2 = time.perf_counter()
            found, n_false = _match(cset.table, sim.transients)
            s = stats[m]
            s["found"] += int(found[strong].sum())
            s["strong"] += int(strong.sum())
            s["false"] += n_false
            s["t_find"].append(t2 - t1)
            s["t_run"].append(t1 - t0)
    mp = len(args.seeds) * args.size ** 2 / 1e6
    out = {"size": args.size, "seeds": len(args.seeds), "threshold": args.threshold}
    for m, s in stats.items():
        out[f"{m}_recovered_snr_ge_7"] = f"{s['found']}/{s['strong']}"
        out[f"{m}_false_per_mpix"] = round(s["false"] / mp, 2)
        out[f"{m}_find_s"] = round(float(np.median(s["t_find"])), 3)
    return out
