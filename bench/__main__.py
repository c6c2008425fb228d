"""Command line of the benchmarks: ``python -m bench [NAME] [options]``.

Without a name, lists the registered benchmarks.  Built in here: ``simulate``
(the pair simulator) and ``foundation`` (background, noise map and detection on a
4096 x 4096 simulated image).  Method benchmarks live in ``bench/bench_<name>.py``
(see :mod:`bench`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

from bench import BENCHMARKS, discover, register
from bench.metrics import measure

MB = 2.0 ** 20


# ---- built-in benchmarks --------------------------------------------------------

def _simulate_args(p):
    p.add_argument("--size", type=int, default=4096, help="image side in pixels (default 4096)")
    p.add_argument("--stars", type=int, default=10000, help="number of stars (default 10000)")
    p.add_argument("--psf", choices=("gaussian", "moffat"), default="gaussian")
    p.add_argument("--transients", type=int, default=20, help="transients (default 20)")


@register("simulate", help="simulate_pair speed and memory (default 4096^2, 10000 stars)",
          arguments=_simulate_args)
def bench_simulate(args):
    from diffgui.engine.simulation import simulate_pair

    def once(seed):
        return simulate_pair(shape=(args.size, args.size), n_stars=args.stars, psf=args.psf,
                             transients=args.transients, seed=seed)

    times, peaks, cpus = [], [], []
    for i in range(args.repeat):
        c0 = time.process_time()
        pair, t, peak = measure(once, args.seed + i)
        cpus.append(time.process_time() - c0)
        del pair
        times.append(t)
        peaks.append(peak)
    return {
        "size": args.size, "stars": args.stars, "psf": args.psf,
        "time_median_s": float(np.median(times)), "time_min_s": min(times),
        "cpu_median_s": float(np.median(cpus)),
        "peak_rss_mb": max(peaks) / MB,
    }


def _median_or_nan(values):
    return float(np.median(values)) if values else float("nan")


def _foundation_args(p):
    p.add_argument("--size", type=int, default=4096, help="image side in pixels (default 4096)")
    p.add_argument("--stars", type=int, default=None,
                   help="number of stars (default 10000 scaled to the area of --size)")
    p.add_argument("--serial", action="store_true",
                   help="run the three steps one after the other instead of analyse_image")
    p.add_argument("--thresh", type=float, default=4.0, help="detection threshold (sigma)")


@register("foundation",
          help="estimate_background + build_noise_map + detect_objects on a 4096^2 image",
          arguments=_foundation_args)
def bench_foundation(args):
    from diffgui.engine.common.detection import detect_objects
    from diffgui.engine.common.image_analysis import analyse_image
    from diffgui.engine.common.noise import build_noise_map, estimate_background
    from diffgui.engine.simulation import simulate_pair

    size = args.size
    n_stars = args.stars if args.stars is not None else int(round(10000 * (size / 4096) ** 2))
    pair = simulate_pair(shape=(size, size), n_stars=n_stars, sky_gradient=(20.0, 10.0),
                         seed=args.seed)
    image = pair.image
    gain = pair.truth["image_gain"]
    steps = {"background": [], "noise_map": [], "detection": [], "total": []}

    def pipeline():
        if not args.serial:
            # Background, then the noise map in a second thread while sep detects.
            t0 = time.perf_counter()
            res = analyse_image(image, gain=gain, thresh=args.thresh)
            steps["total"].append(time.perf_counter() - t0)
            return res.background, res.noise, res.objects
        t0 = time.perf_counter()
        bg = estimate_background(image)
        t1 = time.perf_counter()
        noise = build_noise_map(image, gain=gain, background=bg)
        t2 = time.perf_counter()
        objs = detect_objects(image, err=noise, thresh=args.thresh, gain=gain, background=bg)
        t3 = time.perf_counter()
        steps["background"].append(t1 - t0)
        steps["noise_map"].append(t2 - t1)
        steps["detection"].append(t3 - t2)
        return bg, noise, objs

    totals, peaks, cpus = [], [], []
    for _ in range(args.repeat):
        c0 = time.process_time()
        (bg, noise, objs), t, peak = measure(pipeline)
        cpus.append(time.process_time() - c0)
        totals.append(t)
        peaks.append(peak)
    # One more pass measuring each step's own peak (measure() calls cannot nest).
    _, _, peak_bg = measure(estimate_background, image)
    _, _, peak_noise = measure(build_noise_map, image, gain=gain, background=bg)
    _, _, peak_det = measure(detect_objects, image, err=noise, thresh=args.thresh, gain=gain,
                             background=bg)

    # Quality against the truth.
    sky_sigma = math.sqrt(pair.truth["image_sky"] / gain + (pair.truth["image_readnoise"] / gain) ** 2)
    starless = (pair.image_model - pair.image_background) < 0.05 * pair.image_noise
    bg_err = np.median(np.abs(bg.back - pair.image_background)[starless]) / sky_sigma
    noise_ratio = float(np.median((noise / pair.image_noise)[starless]))
    bright = (pair.image_model - pair.image_background) > 5 * pair.image_noise
    noise_ratio_src = float(np.median((noise / pair.image_noise)[bright])) if bright.any() else float("nan")
    stars = pair.stars
    snr_guess = np.asarray(stars["image_flux"]) / (
        sky_sigma * 2 * math.sqrt(math.pi) * pair.truth["image_fwhm"] * 0.4247)
    complete = _match_fraction(stars["x"][snr_guess > 20], stars["y"][snr_guess > 20],
                               objs["x"], objs["y"], 1.5)
    spurious = 1.0 - _match_fraction(objs["x"], objs["y"], stars["x"], stars["y"], 2.0)
    return {
        "size": size, "stars": n_stars, "repeat": args.repeat,
        "mode": "serial" if args.serial else "analyse_image (noise map beside detection)",
        "background_s": _median_or_nan(steps["background"]),
        "noise_map_s": _median_or_nan(steps["noise_map"]),
        "detection_s": _median_or_nan(steps["detection"]),
        "total_median_s": float(np.median(totals)),
        "total_min_s": min(totals),
        "cpu_median_s": float(np.median(cpus)),
        "peak_rss_mb": max(peaks) / MB,
        "background_peak_mb": peak_bg / MB,
        "noise_map_peak_mb": peak_noise / MB,
        "detection_peak_mb": peak_det / MB,
        "image_mb": image.nbytes / MB,
        "n_detected": len(objs),
        "completeness_snr20": complete,
        "unmatched_detections": spurious,
        "background_error_over_sigma": float(bg_err),
        "noise_map_over_truth_sky": noise_ratio,
        "noise_map_over_truth_sources": noise_ratio_src,
    }


def _match_fraction(x, y, rx, ry, radius):
    """Fraction of (x, y) with a reference (rx, ry) within radius."""
    from scipy.spatial import cKDTree

    x = np.asarray(x, float)
    if x.size == 0:
        return float("nan")
    if len(rx) == 0:
        return 0.0
    tree = cKDTree(np.column_stack([np.asarray(rx, float), np.asarray(ry, float)]))
    d, _ = tree.query(np.column_stack([x, np.asarray(y, float)]), k=1)
    return float(np.mean(d <= radius))


# ---- command line ----------------------------------------------------------------

def _format(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _write_json(path, payload, force):
    path = os.path.abspath(path)
    if os.path.exists(path) and not force:
        raise SystemExit(f"{path} exists: pass --force to replace it.")
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=float)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="diffgui speed and quality benchmarks. Without a name: list them.",
    )
    sub = parser.add_subparsers(dest="name", metavar="NAME")
    for name in sorted(BENCHMARKS):
        b = BENCHMARKS[name]
        p = sub.add_parser(name, help=b.help, description=b.help)
        p.add_argument("--repeat", type=int, default=3, help="runs for the median time (default 3)")
        p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
        p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
        p.add_argument("--force", action="store_true", help="replace an existing --json file")
        if b.arguments is not None:
            b.arguments(p)
    return parser


def _load():
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average unknown"


def main(argv=None):
    failures = discover()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.name:
        parser.print_help()
        print("\nbenchmarks:")
        for name in sorted(BENCHMARKS):
            print(f"  {name:14s} {BENCHMARKS[name].help}")
        for mod, err in failures.items():
            print(f"\n[{mod} failed to import]\n{err}", file=sys.stderr)
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    load_before = _load()
    results = BENCHMARKS[args.name].func(args)
    width = max((len(k) for k in results), default=0)
    print(f"# {args.name}  ({platform.node()}, {os.cpu_count()} cpus, python {platform.python_version()}; "
          f"before: {load_before}, after: {_load()})")
    for k, v in results.items():
        print(f"{k:{width}s}  {_format(v)}")
    if args.json:
        _write_json(args.json, {"benchmark": args.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "cpus": os.cpu_count(), "load_before": load_before,
                                "load_after": _load(), "results": results}, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
