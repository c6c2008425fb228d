"""SFFT benchmarks: diffgui's run_sfft against stdpipe 0.4.1's on the same inputs,
in the same run, and the real-data comparisons with the published differences.

``python -m bench sfft --sizes 1024 2048 4096``: for every size, the stdpipe
reference pair (``make_reference_pair``: template sky 500 / science sky 1000 +
gradient, FWHM 2.5 / 3.5, flux x1.1) is written once; each method then runs in
a fresh subprocess per repeat (stdpipe from ``/opt/stdpipe-env``, never
imported here) with ``err=True, template_err=True`` and gains 2 / 10, every
``get_*`` output requested. The child times the call alone and reads its own
peak RSS (``VmHWM`` after a reset) above the RSS before the call. Medians and
ratios are reported; quality is measured here on the saved outputs.

``python -m bench sfft-real``: DECam stacks and JWST NIRCam differences against
the published ones (the numbers of bench/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import register

MB = 2.0 ** 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDPIPE_PYTHON = "/opt/stdpipe-env/bin/python"

# The child: loads the inputs, runs one method once, saves outputs and figures.
_CHILD = r"""
import json, os, sys, time
import numpy as np

which, folder, repo = sys.argv[1], sys.argv[2], sys.argv[3]
params = json.load(open(os.path.join(folder, "params.json")))
image = np.load(os.path.join(folder, "image.npy"))
template = np.load(os.path.join(folder, "template.npy"))
shape = image.shape
if which == "stdpipe":
    from stdpipe.subtraction import run_sfft
    from stdpipe import sfft as S
    flux = lambda r, x, y: np.array([S.evaluate_flux_scale(r, a, b, shape) for a, b in zip(x, y)])
else:
    sys.path.insert(0, repo)
    from diffgui.engine import run_sfft
    flux = lambda r, x, y: np.asarray(r.evaluate_flux_scale(x, y), float)

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0

import gc; gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
base = status("VmRSS:")
c0 = time.process_time()
t0 = time.perf_counter()
diff, conv, scaled, noise, res = run_sfft(image, template, **params)
wall = time.perf_counter() - t0
cpu = time.process_time() - c0
peak = status("VmHWM:") - base
g = np.linspace(0, shape[1] - 1, 9)
gx, gy = np.meshgrid(g, np.linspace(0, shape[0] - 1, 9))
fs = flux(res, gx.ravel(), gy.ravel())
np.save(os.path.join(folder, which + "_diff.npy"), diff)
np.save(os.path.join(folder, which + "_noise.npy"), noise)
np.save(os.path.join(folder, which + "_scaled.npy"), scaled)
np.save(os.path.join(folder, which + "_dmask.npy"), np.asarray(res.dmask, bool))
json.dump({"wall": wall, "cpu": cpu, "peak": peak, "n_iter": int(res.n_iter),
           "n_good": int(res.n_good), "fs_x": gx.ravel().tolist(), "fs_y": gy.ravel().tolist(),
           "fs": fs.tolist()}, open(os.path.join(folder, which + ".json"), "w"))
"""


def _run_child(which, folder, blas_threads, timeout):
    python = STDPIPE_PYTHON if which == "stdpipe" else sys.executable
    env = dict(os.environ)
    if blas_threads:
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(blas_threads)
    script = os.path.join(folder, "child.py")
    with open(script, "w") as fh:
        fh.write(_CHILD)
    proc = subprocess.run([python, script, which, folder, REPO], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(folder, which + ".json")) as fh:
        return json.load(fh)


def _quality(pair, folder, which):
    from bench.metrics import normalised_residual, residual_at_stars, source_mask

    diff = np.load(os.path.join(folder, which + "_diff.npy"))
    noise = np.load(os.path.join(folder, which + "_noise.npy"))
    dmask = np.load(os.path.join(folder, which + "_dmask.npy"))
    tr = np.c_[pair.transients["x"], pair.transients["y"]]
    st = residual_at_stars(diff, noise, pair.stars, mask=dmask, exclude_positions=tr)
    info = json.load(open(os.path.join(folder, which + ".json")))
    truth = pair.flux_scale_at(np.array(info["fs_x"]), np.array(info["fs_y"]))
    fs = np.array(info["fs"])
    return {
        "q_D": normalised_residual(diff, noise, mask=dmask, exclude=source_mask(pair)),
        "star_mean_abs": st["mean_abs"],
        "star_flux_left": st["flux_left"],
        "flux_scale_centre": float(fs[len(fs) // 2]),
        "flux_scale_max_err_pct": float(100 * np.max(np.abs(fs / truth - 1))),
    }


def _args(p):
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--stdpipe-max", type=int, default=2048,
                   help="largest size at which stdpipe also runs (default 2048)")
    p.add_argument("--stdpipe-repeat", type=int, default=None,
                   help="stdpipe runs per size (default: --repeat)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OPENBLAS_NUM_THREADS of both children (default 1, as in "
                        "stdpipe-reference.md section 6; 0 leaves it unset)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--workdir", default=None, help="folder for the inputs/outputs (temporary)")


@register("sfft", help="run_sfft vs stdpipe 0.4.1's run_sfft: speed, memory, quality",
          arguments=_args)
def run(args):
    from diffgui.engine.simulation import make_reference_pair

    have_stdpipe = os.path.exists(STDPIPE_PYTHON)
    params = dict(err=True, template_err=True, image_gain=2.0, template_gain=10.0,
                  get_convolved=True, get_scaled=True, get_noise=True, get_kernel=True)
    out = {"blas_threads": args.blas_threads, "load_avg_start": os.getloadavg()[0]}
    for size in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix=f"sfft{size}-") as folder:
            pair = make_reference_pair(size, seed=args.seed)
            np.save(os.path.join(folder, "image.npy"), pair.image)
            np.save(os.path.join(folder, "template.npy"), pair.template)
            with open(os.path.join(folder, "params.json"), "w") as fh:
                json.dump(params, fh)
            methods = ["diffgui"]
            if have_stdpipe and size <= args.stdpipe_max:
                methods.append("stdpipe")
            runs = {m: [] for m in methods}
            n_std = args.stdpipe_repeat or args.repeat
            # Interleave the methods so that both see the same machine load.
            for i in range(max(args.repeat, n_std)):
                for m in methods:
                    if m == "stdpipe" and i >= n_std or m == "diffgui" and i >= args.repeat:
                        continue
                    runs[m].append(_run_child(m, folder, args.blas_threads, args.timeout))
            for m in methods:
                walls = [r["wall"] for r in runs[m]]
                key = f"{size}_{m}"
                out[f"{key}_time_median_s"] = float(np.median(walls))
                out[f"{key}_time_min_s"] = float(np.min(walls))
                out[f"{key}_cpu_median_s"] = float(np.median([r["cpu"] for r in runs[m]]))
                out[f"{key}_peak_rss_mb"] = float(np.max([r["peak"] for r in runs[m]]) / MB)
                out[f"{key}_n_iter"] = runs[m][-1]["n_iter"]
                for k, v in _quality(pair, folder, m).items():
                    out[f"{key}_{k}"] = v
            if "stdpipe" in methods:
                out[f"{size}_speedup"] = (out[f"{size}_stdpipe_time_median_s"]
                                          / out[f"{size}_diffgui_time_median_s"])
                out[f"{size}_memory_ratio"] = (out[f"{size}_diffgui_peak_rss_mb"]
                                               / out[f"{size}_stdpipe_peak_rss_mb"])
    out["load_avg_end"] = os.getloadavg()[0]
    return out


# ---- real data -----------------------------------------------------------------------------
def _shared_data():
    """The shared data folder: $DIFFGUI_SHARED, shared/ beside the clone, or /work/shared."""
    for c in (os.environ.get("DIFFGUI_SHARED"), os.path.join(os.path.dirname(REPO), "shared"),
              "/work/shared"):
        if c and os.path.isdir(os.path.join(c, "data")):
            return os.path.join(c, "data")
    return "/work/shared/data"


DATA = _shared_data()


def _fits(path):
    from astropy.io import fits
    return np.asarray(fits.getdata(os.path.join(DATA, path)), dtype=np.float64)


def _real_args(p):
    p.add_argument("--kernels", type=int, nargs="+", default=[7, 11, 15],
                   help="kernel sizes tried on JWST (default 7 11 15)")


@register("sfft-real", help="SFFT on the DECam stacks and JWST NIRCam pair vs the published differences",
          arguments=_real_args)
def run_real(args):
    from bench.metrics import robust_std, source_mask
    from diffgui.engine import run_sfft, sfft

    out = {}
    # DECam: stacks of 5 frames, background-subtracted; gain 3.98 e-/ADU (header GAINA).
    sci = _fits("decam-i-stacks/Stack-DEC-OBS04.fits")
    ref = _fits("decam-i-stacks/Stack-DEC-OBS18.fits")
    pub = _fits("decam-i-stacks/FinalDifference.fits")
    t0 = time.perf_counter()
    diff, noise, res = run_sfft(sci, ref, err=True, template_err=True, image_gain=3.98,
                                template_gain=3.98, get_noise=True, get_kernel=True)
    out["decam_time_s"] = time.perf_counter() - t0
    excl = source_mask(sci, template=ref) | res.dmask
    excl[:10] = excl[-10:] = True
    excl[:, :10] = excl[:, -10:] = True
    out["decam_robust_std_ours"] = robust_std(diff / noise, excl)
    out["decam_robust_std_published"] = robust_std(pub / noise, excl)
    yy, xx = np.mgrid[0:256, 0:256]
    for r in (4, 6, 8):
        ap = (xx - 60) ** 2 + (yy - 181) ** 2 <= r * r
        out[f"decam_bright_r{r}_ours"] = float(diff[ap].sum() / sci[ap].sum())
        out[f"decam_bright_r{r}_published"] = float(pub[ap].sum() / sci[ap].sum())
    out["decam_flux_scale_centre"] = res.evaluate_flux_scale(127.5, 127.5)

    # JWST: decorrelated S/N against the published decorrelated S/N.
    sci = _fits("jwst-nircam-a2744/science.fits")
    ref = _fits("jwst-nircam-a2744/template.fits")
    en = _fits("jwst-nircam-a2744/science_noise.fits")
    tn = _fits("jwst-nircam-a2744/template_noise.fits")
    fm = _fits("jwst-nircam-a2744/sfft_fit_mask.fits") != 0
    pub = _fits("jwst-nircam-a2744/published_sfft_decorrelated_snr.fits")
    srcs = source_mask(sci, template=ref)
    star = (slice(632, 653), slice(268, 289))          # 21x21 around (278, 642)
    yy, xx = np.mgrid[0:900, 0:900]
    ap = (xx - 278) ** 2 + (yy - 642) ** 2 <= 64
    out["jwst_published_robust_all"] = robust_std(pub, pub == 0)
    out["jwst_published_robust_bg"] = robust_std(pub, (pub == 0) | srcs)
    out["jwst_published_star_peak"] = float(np.abs(pub[star]).max())
    out["jwst_published_star_mean_abs_r8"] = float(np.abs(pub[ap]).mean())
    for k in args.kernels:
        for label, fit_region in (("all", None), ("fitmask", fm), ("uniform", None)):
            t0 = time.perf_counter()
            if label == "uniform":
                # Whole image, uniform weights (as the SFFT authors fit), no clipping;
                # the outputs use the given noise maps (tests/test_sfft.py recipe).
                res = sfft.solve(sci, ref, kernel_shape=(k, k), sigma_clip=None)
                bad = res.dmask | ~np.isfinite(sci)
                d, noise = sfft.decorrelate_difference(
                    res, res.diff, en ** 2, tn ** 2, bad, float(np.median(en)), float(np.median(tn)))
                scaled = np.where(bad | ~(noise > 0), 0.0, d / np.where(noise > 0, noise, 1))
            elif fit_region is None:
                d, scaled, noise, res = run_sfft(sci, ref, err=en, template_err=tn,
                                                 kernel_shape=(k, k), decorrelate=True,
                                                 get_scaled=True, get_noise=True, get_kernel=True)
            else:
                # Fit restricted to the authors' fit region, outputs as run_sfft makes them.
                res = sfft.solve(sci, ref, mask=~fit_region, err=en, template_err=tn,
                                 kernel_shape=(k, k))
                tv = tn ** 2
                bad = res.dmask | ~np.isfinite(sci)
                d, noise = sfft.decorrelate_difference(
                    res, res.diff, en ** 2, tv, bad, float(np.median(en)), float(np.median(tn)))
                scaled = np.where(bad | ~(noise > 0), 0.0, d / np.where(noise > 0, noise, 1))
            key = f"jwst_k{k}_{label}"
            out[f"{key}_time_s"] = time.perf_counter() - t0
            ex = (pub == 0) | (scaled == 0)
            out[f"{key}_robust_all"] = robust_std(scaled, ex)
            out[f"{key}_robust_bg"] = robust_std(scaled, ex | srcs)
            out[f"{key}_star_peak"] = float(np.abs(scaled[star]).max())
            out[f"{key}_star_mean_abs_r8"] = float(np.abs(scaled[ap]).mean())
            out[f"{key}_flux_scale_centre"] = res.evaluate_flux_scale(449.5, 449.5)
    return out
