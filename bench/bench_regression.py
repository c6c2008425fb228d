"""Issue 11 speed check: every method of this tree against a base commit, same inputs.

The base tree is a read-only git worktree (``git worktree add /tmp/perf-base d3aa286``).
The inputs are written once (``make_reference_pair`` at each size and, with
``--real``, the pyDIA pair ``0102_vs_0001``); each timed run is a fresh
subprocess that imports one tree, and the two trees alternate (base first on
even repeats, this tree first on odd ones) so that load changes hit both alike.
Prints, per method and size, the median wall and CPU time (``process_time``:
all threads) of each tree and their ratio (this tree / base)::

    python bench/bench_regression.py --base /tmp/perf-base --sizes 1024 2048 --repeat 5 --real

``--save DIR`` keeps each tree's outputs (``DIR/<tree>_<case>_<k>.npy``) for
comparing results (same inputs, so bit equality is expected wherever the
method's code did not change on purpose); ``--compare DIR`` prints the
differences. To check that a speed-up leaves results unchanged, pass the tree
before it as ``--base``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REAL = "/work/shared/data/pydia-bulge-kb13475/pairs/0102_vs_0001"
METHODS = ("zogy", "hotpants", "sfft")


def _call(method, image, template, meta):
    """One run of ``method`` with the benchmark's arguments (imports the tree on sys.path)."""
    from diffgui.engine import run_hotpants, run_sfft, run_zogy

    g1, g2 = meta["image_gain"], meta["template_gain"]
    fw = {} if meta.get("real") else {"image_fwhm": 3.5, "template_fwhm": 2.5}
    if method == "zogy":
        return run_zogy(image, template, image_gain=g1, template_gain=g2, **fw)
    if method == "hotpants":
        return run_hotpants(image, template, err=True, template_err=True, image_gain=g1,
                            template_gain=g2, get_noise=True, backend="native", **fw)
    return run_sfft(image, template, err=True, template_err=True, image_gain=g1,
                    template_gain=g2, get_noise=True)


def _worker(args):
    sys.path.insert(0, args.tree)
    import importlib
    import pkgutil

    import numpy as np
    import diffgui.engine

    # Every engine module imported before the clock starts (the runs import lazily).
    for mod in pkgutil.walk_packages(diffgui.engine.__path__, "diffgui.engine."):
        try:
            importlib.import_module(mod.name)
        except Exception:  # noqa: BLE001  a module that cannot import is not timed either
            pass
    import scipy.optimize  # noqa: F401
    import scipy.spatial  # noqa: F401

    image = np.load(os.path.join(args.inputs, "image.npy"))
    template = np.load(os.path.join(args.inputs, "template.npy"))
    with open(os.path.join(args.inputs, "meta.json")) as fh:
        meta = json.load(fh)
    c0, t0 = time.process_time(), time.perf_counter()
    out = _call(args.method, image, template, meta)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.save:
        arrays = out if isinstance(out, (tuple, list)) else [out]
        for k, a in enumerate(arrays):
            if isinstance(a, np.ndarray):
                np.save(os.path.join(args.save, f"{args.label}_{k}.npy"), a)
    print("RESULT " + json.dumps({"wall": wall, "cpu": cpu}), flush=True)


def _write_inputs(folder, size, real):
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    if real:
        from astropy.io import fits

        sci, ref = fits.open(REAL + "_sci.fits"), fits.open(REAL + "_ref.fits")
        image, template = (np.asarray(h[0].data, dtype=np.float64) for h in (sci, ref))
        meta = {"image_gain": float(sci[0].header.get("GAIN", 1.0)),
                "template_gain": float(ref[0].header.get("GAIN", 1.0)), "real": True}
    else:
        from diffgui.engine.simulation import make_reference_pair

        pair = make_reference_pair(size, seed=0)
        image, template = pair.image, pair.template
        meta = {"image_gain": 2.0, "template_gain": 10.0, "real": False}
    np.save(os.path.join(folder, "image.npy"), np.ascontiguousarray(image))
    np.save(os.path.join(folder, "template.npy"), np.ascontiguousarray(template))
    with open(os.path.join(folder, "meta.json"), "w") as fh:
        json.dump(meta, fh)


def _one(tree, method, inputs, save, label):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--tree", tree,
           "--method", method, "--inputs", inputs, "--label", label]
    if save:
        cmd += ["--save", save]
    env = dict(os.environ, PYTHONPATH=tree)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{label} failed:\n{res.stderr[-3000:]}")


def compare_outputs(folder):
    """Print, per saved output, whether the base and new arrays are identical and
    their largest difference (absolute, and relative to the largest |value|)."""
    import glob

    import numpy as np

    for f in sorted(glob.glob(os.path.join(folder, "base_*.npy"))):
        a, b = np.load(f), np.load(f.replace(os.sep + "base_", os.sep + "new_"))
        name = os.path.basename(f)[5:-4]
        if a.shape != b.shape:
            print(f"{name:28s} shapes differ {a.shape} {b.shape}")
            continue
        fin = np.isfinite(a) & np.isfinite(b)
        diff = np.abs(a - b)[fin]
        top = float(np.abs(a[fin]).max()) if fin.any() else 1.0
        dmax = float(diff.max()) if diff.size else 0.0
        print(f"{name:28s} identical={np.array_equal(a, b, equal_nan=True)} max|diff|={dmax:.3g} "
              f"relative={dmax / top if top else 0:.3g} "
              f"same NaNs={np.array_equal(np.isnan(a), np.isnan(b))}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="/tmp/perf-base", help="base worktree (d3aa286)")
    p.add_argument("--new", default=ROOT, help="tree under test (default: this one)")
    p.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048])
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--real", action="store_true", help="also the pyDIA pair 0102_vs_0001")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--save", help="folder for the outputs of the last repeat")
    p.add_argument("--json", help="write the table as JSON here")
    p.add_argument("--compare", metavar="DIR", help="only compare the outputs saved in DIR")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--label", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.compare:
        return compare_outputs(args.compare)
    tmp = tempfile.mkdtemp(prefix="bench_regression_")
    if args.save:
        os.makedirs(args.save, exist_ok=True)
    try:
        rows = _run_cases(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        fd, path = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".")
        with os.fdopen(fd, "w") as fh:
            json.dump(rows, fh, indent=1)
        os.replace(path, args.json)
    return rows


def _run_cases(args, tmp):
    """Time every method and case; the table's rows."""
    cases = [(str(s), s, False) for s in args.sizes] + ([("pydia0102", 0, True)] if args.real else [])
    rows = []
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for name, size, real in cases:
        inputs = os.path.join(tmp, name)
        _write_inputs(inputs, size, real)
        for method in args.methods:
            times = {"base": [], "new": []}
            for r in range(args.repeat):
                order = ("base", "new") if r % 2 == 0 else ("new", "base")
                for which in order:
                    tree = args.base if which == "base" else args.new
                    last = r == args.repeat - 1
                    times[which].append(_one(tree, method, inputs, args.save if last else None,
                                             f"{which}_{method}_{name}"))
            row = {"method": method, "case": name, "load": os.getloadavg()[0]}
            for which in ("base", "new"):
                for key in ("wall", "cpu"):
                    row[f"{which}_{key}"] = statistics.median(t[key] for t in times[which])
            row["ratio_wall"] = row["new_wall"] / row["base_wall"]
            row["ratio_cpu"] = row["new_cpu"] / row["base_cpu"]
            rows.append(row)
            print(f"{method:9s} {name:10s} base wall {row['base_wall']:7.2f} s cpu "
                  f"{row['base_cpu']:7.2f} s | new wall {row['new_wall']:7.2f} s cpu "
                  f"{row['new_cpu']:7.2f} s | ratio wall {row['ratio_wall']:.3f} cpu "
                  f"{row['ratio_cpu']:.3f} | load {row['load']:.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
