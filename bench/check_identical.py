"""Bit-identity check for refactors: SHA-256 of every array the methods return.

Runs the simulator, ``run_zogy``, ``run_sfft`` and ``run_hotpants(backend='native')``
on simulated pairs with fixed seeds and prints one ``name  sha256`` line per array.
Run it on two trees (e.g. before and after a pure refactor) and compare the output::

    PYTHONPATH=/path/to/old/tree python3 bench/check_identical.py > old.txt
    PYTHONPATH=. python3 bench/check_identical.py > new.txt
    diff old.txt new.txt && echo identical

Only public API names that exist on both sides of issue 10's layout change are used
(``diffgui.engine.subtraction`` and ``diffgui.engine.simulation``).
"""

import argparse
import hashlib
import os
import sys

import numpy as np


def _digest(value):
    """SHA-256 of an array's dtype, shape and bytes (None for non-arrays)."""
    a = np.ascontiguousarray(value)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _kernel_arrays(kernel, shape):
    """Arrays that pin a returned kernel object down: values at a few positions."""
    ny, nx = shape
    points = [(0.0, 0.0), (nx / 2, ny / 2), (nx - 1.0, ny - 1.0), (nx / 4, 3 * ny / 4)]
    out = {}
    if hasattr(kernel, "evaluate_kernel_at"):          # SFFT
        for i, (x, y) in enumerate(points):
            out[f"at{i}"] = kernel.evaluate_kernel_at(x, y)
        out["flux_scale_map"] = kernel.flux_scale_map()
    elif hasattr(kernel, "amplitudes"):                # Alard-Lupton SpatialKernel
        for i, (x, y) in enumerate(points):
            out[f"amp{i}"] = np.asarray(kernel.amplitudes(x, y))
        out["poly_kernels"] = kernel.poly_kernels()
    return out


def _report(label, values, shape, lines):
    for i, v in enumerate(values):
        if isinstance(v, np.ndarray):
            lines.append((f"{label}[{i}]", _digest(v)))
        elif v is None or np.isscalar(v):
            lines.append((f"{label}[{i}]", repr(v)))
        else:
            arrays = _kernel_arrays(v, shape)
            for k, a in arrays.items():
                lines.append((f"{label}[{i}].{k}", _digest(a)))
            if not arrays and hasattr(v, "tostring"):  # FITS header
                lines.append((f"{label}[{i}]", hashlib.sha256(v.tostring().encode()).hexdigest()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--only", nargs="*", default=None,
                   help="subset of: simulation zogy sfft hotpants")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from diffgui.engine.simulation import simulate_pair
    from diffgui.engine.subtraction import run_hotpants, run_sfft, run_zogy

    which = set(args.only or ["simulation", "zogy", "sfft", "hotpants"])
    shape = (args.size, args.size)
    pairs = {
        "gauss": simulate_pair(shape=shape, sky_gradient=(20.0, 10.0), transients=4, seed=1),
        "moffat": simulate_pair(shape=shape, psf="moffat", image_fwhm_gradient=0.2,
                                flux_scale_gradient=0.05, template_shift=(0.3, -0.2),
                                transients=4, seed=2),
    }
    lines = []
    for name, pair in pairs.items():
        if "simulation" in which:
            _report(f"simulate_pair.{name}", [pair.image, pair.template, pair.image_noise,
                                              pair.template_noise, pair.image_psf(100, 200, 25),
                                              pair.template_psf(300, 50, 25)], shape, lines)
        if "zogy" in which:
            out = run_zogy(pair.image, pair.template, err=pair.image_noise,
                           template_err=pair.template_noise, image_gain=pair.truth["image_gain"],
                           template_gain=pair.truth["template_gain"], get_psf=True,
                           get_Fpsf=True, nthreads=1)
            _report(f"run_zogy.{name}", list(out), shape, lines)
            out = run_zogy(pair.image, pair.template, nx=2, ny=2, overlap=40, psf_clean=0.5,
                           nthreads=1)
            _report(f"run_zogy.{name}.2x2", list(out), shape, lines)
        if "sfft" in which:
            out = run_sfft(pair.image, pair.template, err=pair.image_noise,
                           template_err=pair.template_noise, get_convolved=True,
                           get_scaled=True, get_noise=True, get_kernel=True)
            _report(f"run_sfft.{name}", list(out), shape, lines)
            out = run_sfft(pair.image, pair.template, decorrelate=True, get_noise=True)
            _report(f"run_sfft.{name}.decorr", list(out), shape, lines)
        if "hotpants" in which:
            out = run_hotpants(pair.image, pair.template, err=pair.image_noise,
                               template_err=pair.template_noise,
                               image_fwhm=pair.truth["image_fwhm"],
                               template_fwhm=pair.truth["template_fwhm"],
                               get_convolved=True, get_scaled=True, get_noise=True,
                               get_kernel=True, get_header=False, backend="native")
            _report(f"run_hotpants.{name}", list(out), shape, lines)
            out = run_hotpants(pair.image, pair.template, nx=2, extra={"ko": 1, "bgo": 1},
                               get_noise=True, backend="native")
            _report(f"run_hotpants.{name}.2x2", list(out), shape, lines)
    for label, h in lines:
        print(f"{label:40s} {h}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
