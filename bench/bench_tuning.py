"""Scorecard cost and ``diffgui tune`` acceptance (issue 13).

``python -m bench tuning-cost``: one run of each method on
``hotpants-runs/varying-psf-1024`` (CPU and wall time) and the cost of its WHOLE
scorecard, star catalogues included, as a share of the run's CPU time: (a) in the
window (a pair seen for the first time: template and science catalogues), (b) in
``diffgui batch`` with a shared template (its catalogue cached by content) and (c) in
``diffgui batch`` with a new template per pair; medians of ``--repeat`` (>= 3) and the
load average.

``python -m bench tuning --pairs varying elliptical strong pydia --methods hotpants zogy sfft``:
``tune`` with a 60 s budget per method on

- ``varying``: ``hotpants-runs/varying-psf-1024`` with its noise maps and masks;
- ``elliptical``: a simulated 1024^2 pair whose science PSF is elliptical, with an
  ellipticity growing from 0.05 at the centre to 0.3 at the corners, a tangential
  position angle (as optical aberrations do) and a FWHM 35 % larger at the right
  edge; the template PSF is round (``simulate_pair(image_ellipticity=...)``);
- ``strong``: a simulated pair with a wider, faster-varying PSF (:func:`strong_pair`)
  that SFFT's defaults do not subtract well;
- ``pydia``: the three real pyDIA pairs with every default (gains from headers).

``--regions 5`` (default), ``9`` or ``0`` (whole-frame trials) sets the sample.

For each, the default and the tuned settings are then run again as a user would
(no object lists) and scored; ``pass`` means median <= 1.0 and p95 <= 2.5, and
``no_worse`` that no score moved away from its ideal (pyDIA acceptance).
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench import register

DATA = "/work/shared/data"
VARYING = os.path.join(DATA, "hotpants-runs", "varying-psf-1024", "input")
PYDIA = os.path.join(DATA, "pydia-bulge-kb13475", "pairs")


def _varying_pair():
    from diffgui.app.pair import load_pair

    f = lambda n: os.path.join(VARYING, n)  # noqa: E731
    pair = load_pair(f("science.fits"), f("template.fits"), mask=f("science_mask.fits"),
                     template_mask=f("template_mask.fits"), err=f("science_err.fits"),
                     template_err=f("template_err.fits"))
    return pair, {"image_gain": 1.6, "template_gain": 3.0}


def elliptical_pair(size=1024, n_stars=2500, seed=13):
    """A pair whose science PSF ellipticity and position angle change across the field.

    ``simulate_pair`` with Moffat PSFs, science ellipticity 0.05 at the centre to 0.3
    at the corners (tangential major axis) and FWHM 3.4 px +35 % across x; the
    template is round (2.5 px). Returns ``(Pair, base_params)``.
    """
    from diffgui.app.pair import Pair
    from diffgui.engine.simulation import simulate_pair

    sim = simulate_pair(shape=(size, size), n_stars=n_stars, psf="moffat", image_fwhm=3.4,
                        template_fwhm=2.5, image_fwhm_gradient=(0.35, 0.0),
                        image_ellipticity=(0.05, 0.3), flux_scale=1.15, image_sky=1000.0,
                        template_sky=400.0, image_gain=2.0, template_gain=4.0,
                        star_flux_range=(500, 2e5), seed=seed)
    return (Pair(image=sim.image, template=sim.template, name="elliptical-1024"),
            {"image_gain": 2.0, "template_gain": 4.0, "err": True, "template_err": True})


def strong_pair(size=1024, n_stars=2500, seed=17):
    """A pair that SFFT's defaults (7 x 7 kernel of order 2) do not subtract to 1.0 / 2.5.

    Moffat science PSF of FWHM 4.2 px growing by 50 % across x and 25 % across y,
    ellipticity 0.05 at the centre to 0.25 at the corners (tangential); round
    2.5 px template: the matching kernel is wide and varies faster than a
    quadratic. Measured (whole frame, 19:04): defaults 0.89 / 2.94, order 3 0.81 /
    2.22, 9 x 9 of order 3 0.76 / 2.04. Returns ``(Pair, base_params)``.
    """
    from diffgui.app.pair import Pair
    from diffgui.engine.simulation import simulate_pair

    sim = simulate_pair(shape=(size, size), n_stars=n_stars, psf="moffat", image_fwhm=4.2,
                        template_fwhm=2.5, image_fwhm_gradient=(0.5, 0.25),
                        image_ellipticity=(0.05, 0.25), flux_scale=1.15, image_sky=1000.0,
                        template_sky=400.0, image_gain=2.0, template_gain=4.0,
                        star_flux_range=(500, 2e5), seed=seed)
    return (Pair(image=sim.image, template=sim.template, name="strong-1024"),
            {"image_gain": 2.0, "template_gain": 4.0, "err": True, "template_err": True})


def _pydia_pairs():
    from diffgui.app.pair import load_pair

    for name in ("0102_vs_0001", "0130_vs_0178", "0131_vs_0174"):
        pair = load_pair(os.path.join(PYDIA, f"{name}_sci.fits"), os.path.join(PYDIA, f"{name}_ref.fits"))
        yield name, pair, {}


def _user_run(pair, method, params):
    """Run as the window or ``diffgui run`` does (no object list) and return (quality, seconds)."""
    from diffgui.app.run import Run

    run = Run(method=method, params=dict(params))
    t0 = time.perf_counter()
    try:
        run.execute(pair)
    except Exception as exc:
        return {"error": str(exc)[:120]}, time.perf_counter() - t0
    return run.quality, run.timings["total"]


def _tune_one(label, pair, method, base, budget, regions=5):
    from diffgui.app.tuning import describe_changes, diff_params, no_worse, tune

    c0, load0 = time.process_time(), os.getloadavg()[0]
    res = tune(pair, method, base, budget=budget, regions=regions)
    cpu = time.process_time() - c0
    q0, t0 = _user_run(pair, method, base)
    q1, t1 = _user_run(pair, method, res.best.params)
    m0, m1 = q0.get("metrics") or {}, q1.get("metrics") or {}

    def ok(m):
        return m.get("peak_median") is not None and m["peak_median"] <= 1.0 and m["peak_p95"] <= 2.5
    out = {"pair": label, "method": method, "tune_s": round(res.seconds, 1), "tune_cpu_s": round(cpu, 1),
           "load_before_after": (round(load0, 1), round(os.getloadavg()[0], 1)),
           "sample": res.sample.describe() if res.sample is not None else "whole frame",
           "runs": len(res.trials),
           "best": describe_changes(diff_params(base, res.best.params)) or "(defaults)",
           "default_med": m0.get("peak_median"), "default_p95": m0.get("peak_p95"),
           "tuned_med": m1.get("peak_median"), "tuned_p95": m1.get("peak_p95"),
           "default_pass": ok(m0), "tuned_pass": ok(m1), "no_worse": no_worse(q1, q0),
           "default_run_s": round(t0, 2), "tuned_run_s": round(t1, 2)}
    for k in ("robust_std", "flux_left", "background_left", "candidates_per_mpix"):
        out[f"{k}_before_after"] = (m0.get(k), m1.get(k))
    print(out, flush=True)
    return out


def _args(p):
    p.add_argument("--pairs", nargs="+", default=["varying", "elliptical", "strong", "pydia"])
    p.add_argument("--methods", nargs="+", default=["hotpants", "zogy", "sfft"])
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--regions", type=int, default=5, help="5, 9 or 0 (whole-frame trials)")


@register("tuning", help="diffgui tune: before/after scores per method and pair", arguments=_args)
def bench_tuning(args):
    rows = []
    sources = []
    if "varying" in args.pairs:
        sources.append(("varying-psf-1024", *_varying_pair()))
    if "elliptical" in args.pairs:
        sources.append(("elliptical-1024", *elliptical_pair(seed=args.seed or 13)))
    if "strong" in args.pairs:
        sources.append(("strong-1024", *strong_pair()))
    if "pydia" in args.pairs:
        sources.extend(_pydia_pairs())
    for label, pair, base in sources:
        for method in args.methods:
            rows.append(_tune_one(label, pair, method, base, args.budget, args.regions))
    return {f"{r['pair']}/{r['method']}": r for r in rows}


def _timed(f):
    """``(result, cpu_s, wall_s)`` of ``f()`` (CPU: process time of all threads)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = f()
    return out, time.process_time() - c0, time.perf_counter() - t0


def _scorecard_costs(run, repeat):
    """Median CPU/wall seconds of the whole scorecard of ``run`` in the three situations:
    ``window`` (a pair seen for the first time: template and science catalogues, star sets,
    scoring), ``batch_new_template`` (a freshly loaded pair, light star sets, a template never
    seen) and ``batch_shared_template`` (the template of the pair before: its catalogue is
    cached by content)."""
    from diffgui.app import scoring

    costs = {}
    for label, light, clear_templates in (("window", False, True),
                                          ("batch_new_template", True, True),
                                          ("batch_shared_template", True, False)):
        cpus, walls = [], []
        for _ in range(repeat):
            fresh, _ = _varying_pair()
            scoring._STARS.clear()
            if clear_templates:
                scoring._TEMPLATES.clear()
            card, cpu, wall = _timed(lambda: scoring.score_run(run, fresh, light=light))
            assert card, "the scorecard was not computed"
            cpus.append(cpu)
            walls.append(wall)
        costs[label] = (float(np.median(cpus)), float(np.median(walls)))
    return costs


def _cost_args(p):
    p.add_argument("--methods", nargs="+", default=["hotpants", "sfft", "zogy"])


@register("tuning-cost", arguments=_cost_args,
          help="whole scorecard cost against the run, per method (varying-psf-1024)")
def bench_cost(args):
    """For each method: one run (CPU and wall), then the whole scorecard (star catalogues
    included) in a window run, in ``diffgui batch`` with a new template per pair and with a
    shared template; ``*_pct`` are scorecard CPU / run CPU in the same process."""
    from diffgui.app.run import Run

    repeat = max(3, int(getattr(args, "repeat", 3) or 3))
    pair, base = _varying_pair()
    out = {"load_average_1min": round(os.getloadavg()[0], 2), "repeat": repeat}
    extras = {"hotpants": {"backend": "native"}, "sfft": {}, "zogy": {}}
    for method in args.methods:
        run = Run(method=method, params={**base, **extras.get(method, {})})
        _, run_cpu, run_wall = _timed(lambda: run.execute(pair, score=False))
        out[f"{method}_run_cpu_s"] = round(run_cpu, 3)
        out[f"{method}_run_wall_s"] = round(run_wall, 3)
        for label, (cpu, wall) in _scorecard_costs(run, repeat).items():
            out[f"{method}_{label}_cpu_s"] = round(cpu, 4)
            out[f"{method}_{label}_wall_s"] = round(wall, 4)
            out[f"{method}_{label}_pct"] = round(100 * cpu / run_cpu, 1)
    out["max_pct"] = max(v for k, v in out.items() if k.endswith("_pct"))
    out["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    return out


#: Parameter edits of the preview benchmark (alternated, as a user trying values would).
_EDITS = {"hotpants": [{"extra": {"ko": 1}}, {"extra": {"ko": 2}}],
          "sfft": [{"bg_poly_order": 1}, {"bg_poly_order": 2}],
          "zogy": [{"dx": 0.3}, {"dx": 0.25}]}


@register("tuning-preview", help="latency of a 512^2 region preview per method (varying-psf-1024)")
def bench_preview(args):
    """The first preview of a new region, then the median of 6 parameter edits (wall and
    CPU seconds; previews of one crop reuse its ZOGY PSFs and alignment check)."""
    from diffgui.app.preview import RegionPreview

    pair, base = _varying_pair()
    out = {"load_average_1min": round(os.getloadavg()[0], 2)}
    for method, extra in (("hotpants", {"backend": "native"}), ("sfft", {}), ("zogy", {})):
        pv = RegionPreview(pair, fwhm=4.5)
        pv.set_region(256, 256, 768, 768)
        walls, cpus = [], []
        for i in range(7):
            edit = _EDITS[method][i % 2] if i else {}
            t0, c0 = time.perf_counter(), time.process_time()
            run = pv.request(method, {**base, **extra, **edit})
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        out[f"{method}_first_s"] = round(walls[0], 3)
        out[f"{method}_edit_median_s"] = round(float(np.median(walls[1:])), 3)
        out[f"{method}_edit_median_cpu_s"] = round(float(np.median(cpus[1:])), 3)
        out[f"{method}_shape"] = "x".join(map(str, run.results["diff"].shape))
    out["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    return out
