"""HOTPANTS benchmark: the native Alard-Lupton backend (or the executable) on the
pairs of hotpants.md section 4, with the same options as the recorded HOTPANTS runs.

``python -m bench hotpants --size 2048``; ``--psf moffat``; ``--backend exe`` when a
``hotpants`` executable is installed; ``--ko 0`` for the wrapper's default spatial
order. The numbers to compare with (HOTPANTS 5.1.11, single-threaded, this kind
of machine) are in bench/README.md.
"""

from __future__ import annotations

import time

import numpy as np

from bench import register
from bench.metrics import measure, normalised_residual, recovered_vs_ideal, source_mask

MB = 2.0 ** 20

#: HOTPANTS's own results (hotpants.md section 4): size -> (wall s, peak RSS MB).
HOTPANTS_REFERENCE = {1024: (0.80, 87), 2048: (3.6, 207), 4096: (15.0, 687)}


def hotpants_section4_pair(size, psf="gaussian", seed=0):
    """The synthetic pairs of hotpants.md section 4.

    About 6e-4 stars per pixel with N(>F) ~ 1/F; FWHM 2.5 (template) and 3.5
    (science); flux x1.3; sky 300 and 1000 ADU with a 60 ADU gradient on the
    science image; gain 2 and read noise 5 e- on both; one 8000 e- transient.
    """
    from diffgui.engine.simulation import simulate_pair

    n = int(size)
    return simulate_pair(
        shape=(n, n), n_stars=int(6e-4 * n * n), star_flux_range=(150.0, 300000.0),
        flux_slope=1.0, psf=psf, moffat_beta=3.0, image_fwhm=3.5, template_fwhm=2.5,
        flux_scale=1.3, image_sky=1000.0, template_sky=300.0, sky_gradient=(60.0, 0.0),
        image_gain=2.0, template_gain=2.0, image_readnoise=5.0, template_readnoise=5.0,
        saturation=50000.0,
        transients=[{"x": 0.4 * n + 0.3, "y": 0.6 * n + 0.6, "flux": 4000.0, "kind": "new"}],
        seed=seed)


def _args(p):
    p.add_argument("--size", type=int, default=2048, help="image side (default 2048)")
    p.add_argument("--psf", choices=("gaussian", "moffat"), default="gaussian")
    p.add_argument("--backend", choices=("native", "exe"), default="native")
    p.add_argument("--ko", type=int, default=2, help="kernel spatial order (default 2, as "
                   "in the recorded runs; the wrapper's own default is 0)")
    p.add_argument("--direction", choices=("t", "i", "b"), default="t",
                   help="-c: t (as recorded), or b to try both directions")


@register("hotpants", help="run_hotpants (native backend by default) on hotpants.md's pairs",
          arguments=_args)
def run(args):
    from diffgui.engine import run_hotpants

    t0 = time.perf_counter()
    pair = hotpants_section4_pair(args.size, args.psf, args.seed)
    t_sim = time.perf_counter() - t0
    t = pair.truth
    # The recorded runs' command, in stdpipe style (hotpants.md section 4).
    extra = {"tu": 47500.0, "iu": 47500.0, "tr": 5.0, "ir": 5.0, "n": "t", "c": args.direction,
             "ko": args.ko, "bgo": 1}
    kwargs = dict(image_fwhm=3.5, template_fwhm=2.5, image_gain=2.0, template_gain=2.0,
                  extra=extra, get_noise=True, get_kernel=True, get_header=True,
                  backend=args.backend)
    times, peaks, cpus = [], [], []
    for _ in range(max(1, args.repeat)):
        c0 = time.process_time()
        res, wall, peak = measure(run_hotpants, pair.image, pair.template, **kwargs)
        cpus.append(time.process_time() - c0)
        times.append(wall)
        peaks.append(peak)
    diff, noise, kernel, header = res
    bad = (noise <= 0) | (diff == np.float32(1e-30))
    ksum = kernel.ksum()
    # -n t: the difference is in template units; the transient metrics want science units.
    scale = ksum if kernel.normalizes() else 1.0
    rec = recovered_vs_ideal(diff * scale, noise * scale, pair)
    npix = args.size ** 2
    ref_t, ref_m = HOTPANTS_REFERENCE.get(args.size, (float("nan"), float("nan")))
    return {
        "size": args.size, "psf": args.psf, "backend": args.backend, "ko": args.ko,
        "direction": kernel.direction,
        "time_median_s": float(np.median(times)), "time_min_s": float(min(times)),
        "cpu_median_s": float(np.median(cpus)),
        "us_per_pixel": float(np.median(times)) / npix * 1e6,
        "peak_rss_mb": max(peaks) / MB, "bytes_per_pixel": max(peaks) / npix,
        "hotpants_time_s": ref_t, "hotpants_peak_mb": ref_m,
        "q_D": normalised_residual(diff, noise, mask=bad, exclude=source_mask(pair)),
        "ksum": ksum, "ksum_truth": t["flux_scale"],
        "x2nrm": float(header["X2NRM00"]), "nstamps": int(header["NSTAMPS"]),
        "transient_snr": float(rec["snr"][0]), "transient_ideal_snr": float(rec["ideal_snr"][0]),
        "transient_flux_ratio": float(rec["flux_ratio"][0]),
        "simulate_s": t_sim,
    }
