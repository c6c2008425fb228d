"""ZOGY benchmark: diffgui's run_zogy against stdpipe 0.4.1 on the same inputs, in one run.

``python -m bench zogy --sizes 1024 2048`` simulates the stdpipe reference pair
(:func:`~diffgui.engine.simulation.make_reference_pair`, stdpipe-reference.md
section 6) at each size, writes it to ``.npy`` files, and runs each method in a
fresh worker process on those files (the same interpreter for diffgui, the
stdpipe virtual environment for stdpipe, which is never imported here):

``psf``
    explicit PSFs (the true PSFs at the centre, 31 x 31, as PSFEx-layout dicts),
    ``scale=1`` (stdpipe crashes with ``scale=None``), flux-scale and shift fits on.
``est``
    no PSFs: diffgui estimates them from the stars; stdpipe runs SExtractor and
    PSFEx twice.

Both use ``err=None`` with the true gains (noise maps from the background RMS
and the gain) and ``get_Fpsf=True``. Each worker times ``--repeat`` calls (the
first one includes FFT planning in both) and reports the median and its peak
RSS. Quality is measured here on the outputs of the last call against the truth.
``--mem-size 4096`` also measures diffgui's peak memory on a 4096^2 pair
(process VmHWM, inputs included).

Options: ``--stdpipe-python`` (default /opt/stdpipe-env/bin/python; ``--no-stdpipe``
to skip it), ``--modes psf est``, ``--nthreads``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import register

MB = 2.0 ** 20
STDPIPE_PYTHON = "/opt/stdpipe-env/bin/python"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the worker process (either interpreter): loads the inputs, runs the
# method ``repeat`` times, saves the last outputs, prints one JSON line.
_WORKER = r'''
import json, os, sys, time
import numpy as np

def rss_now():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

def hwm():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False

impl, folder, mode, repeat, nthreads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if impl == "stdpipe":
    from stdpipe.subtraction import run_zogy
else:
    from diffgui.engine.api import run_zogy
p = json.load(open(os.path.join(folder, "params.json")))
image = np.load(os.path.join(folder, "image.npy"))
template = np.load(os.path.join(folder, "template.npy"))
kw = dict(image_gain=p["image_gain"], template_gain=p["template_gain"], get_Fpsf=True,
          nthreads=nthreads, fit_scale=True, fit_shift=True)
if mode == "psf":
    def as_dict(a):
        return {"width": a.shape[1], "height": a.shape[0], "fwhm": p["fwhm"], "sampling": 1.0,
                "degree": 0, "ncoeffs": 1, "x0": 0.0, "sx": 1.0, "y0": 0.0, "sy": 1.0,
                "data": a[None].copy()}
    kw.update(image_psf=as_dict(np.load(os.path.join(folder, "image_psf.npy"))),
              template_psf=as_dict(np.load(os.path.join(folder, "template_psf.npy"))), scale=1.0)
elif mode == "psf_tiles":
    def as_dict(a):
        return {"width": a.shape[1], "height": a.shape[0], "fwhm": p["fwhm"], "sampling": 1.0,
                "degree": 0, "ncoeffs": 1, "x0": 0.0, "sx": 1.0, "y0": 0.0, "sy": 1.0,
                "data": a[None].copy()}
    kw.update(image_psf=as_dict(np.load(os.path.join(folder, "image_psf.npy"))),
              template_psf=as_dict(np.load(os.path.join(folder, "template_psf.npy"))), scale=1.0,
              nx=2, ny=2, overlap=50)
base = rss_now()
times, peaks = [], []
out = None
for i in range(repeat):
    out = None
    exact = reset_hwm()
    t0 = time.perf_counter()
    out = run_zogy(image, template, **kw)
    times.append(time.perf_counter() - t0)
    peaks.append(hwm())
if os.environ.get("ZOGY_BENCH_SAVE", "1") == "1":
    for name, arr in zip(("D", "S_corr", "Fpsf", "Fpsf_err"), out):
        np.save(os.path.join(folder, f"out_{impl}_{mode}_{name}.npy"), np.asarray(arr, dtype=np.float64))
print("RESULT " + json.dumps({"times": times, "peak_rss": max(peaks), "base_rss": base,
                              "exact_peak": exact}), flush=True)
'''


def _args(p):
    p.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048],
                   help="image sides (default 1024 2048)")
    p.add_argument("--modes", nargs="+", default=["psf", "est"],
                   choices=("psf", "est", "psf_tiles"), help="what to run (default psf est)")
    p.add_argument("--stdpipe-python", default=STDPIPE_PYTHON,
                   help=f"interpreter of the stdpipe 0.4.1 environment (default {STDPIPE_PYTHON})")
    p.add_argument("--no-stdpipe", action="store_true", help="run diffgui only")
    p.add_argument("--mem-size", type=int, default=4096,
                   help="side of the diffgui-only peak-memory run, 0 to skip (default 4096)")
    p.add_argument("--nthreads", type=int, default=0, help="FFT threads (0: all cores)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per worker, seconds")


def _run_worker(python, impl, folder, mode, repeat, nthreads, timeout, save=True):
    env = dict(os.environ)
    env["ZOGY_BENCH_SAVE"] = "1" if save else "0"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    if impl == "diffgui":
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    script = os.path.join(folder, "worker.py")
    t0 = time.perf_counter()
    proc = subprocess.run([python, script, impl, folder, mode, str(repeat), str(nthreads)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=folder)
    wall = time.perf_counter() - t0
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}", "process_s": wall}
    res = json.loads(line[-1][len("RESULT "):])
    res["process_s"] = wall
    return res


def _quality(pair, folder, impl, mode):
    from bench.metrics import (false_positives_per_mpix, normalised_residual, recovered_vs_ideal,
                               residual_at_stars, source_mask)

    def load(name):
        return np.load(os.path.join(folder, f"out_{impl}_{mode}_{name}.npy"))

    D, S, Fp, Fe = (load(n) for n in ("D", "S_corr", "Fpsf", "Fpsf_err"))
    sig = np.sqrt(pair.image_noise ** 2 + (pair.truth["flux_scale"] * pair.template_noise) ** 2)
    src = source_mask(pair)
    edge = np.zeros(D.shape, bool)
    edge[:30] = edge[-30:] = True
    edge[:, :30] = edge[:, -30:] = True
    rec = recovered_vs_ideal(D, sig, pair, fpsf=Fp, fpsf_err=Fe)
    stars = pair.stars[~pair.stars["variable"] & ~pair.stars["saturated"]]
    at = residual_at_stars(D, sig, stars)
    known = np.c_[pair.transients["x"], pair.transients["y"]]
    q = {
        "q_D": normalised_residual(D, sig, exclude=src | edge),
        "q_S": normalised_residual(S, 1.0, exclude=src | edge),
        "star_flux_left": float(at["flux_left"]) if "flux_left" in at else float("nan"),
        "star_scatter": float(at["scatter"]) if "scatter" in at else float("nan"),
        "fp_per_mpix_Scorr5": false_positives_per_mpix(S, known, threshold=5.0, mask=edge),
        "fpsf_ratio_min": float(np.nanmin(rec["fpsf_ratio"])),
        "fpsf_ratio_median": float(np.nanmedian(rec["fpsf_ratio"])),
    }
    for flux in (1000.0, 5000.0, 20000.0):
        sel = np.isclose(np.asarray(rec["flux"]), flux)
        if sel.any():
            q[f"snr_fpsf_{int(flux)}"] = float(np.asarray(rec["fpsf_snr"])[sel][0])
            q[f"ideal_snr_{int(flux)}"] = float(np.asarray(rec["ideal_snr"])[sel][0])
            iy, ix = int(round(float(np.asarray(rec["y"])[sel][0]))), int(round(float(np.asarray(rec["x"])[sel][0])))
            q[f"scorr_peak_{int(flux)}"] = float(np.abs(S[iy - 1:iy + 2, ix - 1:ix + 2]).max())
    return q


def _write_inputs(pair, folder):
    """The pair, PSFs at the centre, parameters and the worker script, for both implementations."""
    h, w = pair.image.shape
    np.save(os.path.join(folder, "image.npy"), pair.image)
    np.save(os.path.join(folder, "template.npy"), pair.template)
    np.save(os.path.join(folder, "image_psf.npy"), pair.image_psf(w // 2, h // 2, 31))
    np.save(os.path.join(folder, "template_psf.npy"), pair.template_psf(w // 2, h // 2, 31))
    with open(os.path.join(folder, "params.json"), "w") as fh:
        json.dump({"image_gain": pair.truth["image_gain"],
                   "template_gain": pair.truth["template_gain"],
                   "fwhm": pair.truth["image_fwhm"]}, fh)
    with open(os.path.join(folder, "worker.py"), "w") as fh:
        fh.write(_WORKER)


def _load_avg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


@register("zogy", help="run_zogy vs stdpipe 0.4.1 (subprocess) on the stdpipe reference pair",
          arguments=_args)
def run(args):
    from diffgui.engine.simulation import make_reference_pair

    stdpipe_ok = (not args.no_stdpipe) and os.path.exists(args.stdpipe_python)
    if stdpipe_ok:
        chk = subprocess.run([args.stdpipe_python, "-c", "import stdpipe.subtraction"],
                             capture_output=True, text=True)
        stdpipe_ok = chk.returncode == 0
    have_exe = shutil.which("psfex") is not None and (
        shutil.which("source-extractor") or shutil.which("sex")) is not None
    out = {"repeat": args.repeat, "stdpipe": "0.4.1 via " + args.stdpipe_python if stdpipe_ok else "skipped",
           "load_avg_start": _load_avg()}
    for size in args.sizes:
        pair = make_reference_pair(size=size, seed=args.seed)
        folder = tempfile.mkdtemp(prefix=f"zogy-bench-{size}-")
        try:
            _write_inputs(pair, folder)
            for mode in args.modes:
                impls = ["diffgui"] + (["stdpipe"] if stdpipe_ok and (mode != "est" or have_exe) else [])
                med = {}
                for impl in impls:
                    python = sys.executable if impl == "diffgui" else args.stdpipe_python
                    res = _run_worker(python, impl, folder, mode, args.repeat, args.nthreads, args.timeout)
                    key = f"{size}_{mode}_{impl}"
                    if "error" in res:
                        out[f"{key}_error"] = res["error"]
                        continue
                    med[impl] = float(np.median(res["times"]))
                    out[f"{key}_time_median_s"] = med[impl]
                    out[f"{key}_time_first_s"] = res["times"][0]
                    out[f"{key}_peak_rss_mb"] = res["peak_rss"] / MB
                    out[f"{key}_peak_above_inputs_mb"] = (res["peak_rss"] - res["base_rss"]) / MB
                    for k, v in _quality(pair, folder, impl, mode).items():
                        out[f"{key}_{k}"] = v
                if len(med) == 2:
                    out[f"{size}_{mode}_time_ratio_diffgui_over_stdpipe"] = med["diffgui"] / med["stdpipe"]
            out[f"{size}_load_avg"] = _load_avg()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.mem_size:
        size = args.mem_size
        pair = make_reference_pair(size=size, seed=args.seed)
        folder = tempfile.mkdtemp(prefix=f"zogy-bench-{size}-")
        try:
            _write_inputs(pair, folder)
            del pair
            for mode in ("psf", "est"):
                res = _run_worker(sys.executable, "diffgui", folder, mode, 1, args.nthreads, args.timeout,
                                  save=False)
                key = f"{size}_{mode}_diffgui"
                if "error" in res:
                    out[f"{key}_error"] = res["error"]
                    continue
                out[f"{key}_time_s"] = res["times"][0]
                out[f"{key}_peak_rss_mb"] = res["peak_rss"] / MB
                out[f"{key}_inputs_rss_mb"] = res["base_rss"] / MB
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    out["load_avg_end"] = _load_avg()
    return out
