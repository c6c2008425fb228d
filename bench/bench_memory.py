"""Measure the peak memory of each method on simulated pairs (calibrates
:mod:`diffgui.engine.common.resources`).

Each case runs in a fresh subprocess; the figure is the peak RSS growth of the
run (``ru_maxrss`` after minus before), next to the estimate of
:func:`diffgui.engine.common.resources.estimate_memory`.

    nice python3 -m bench.bench_memory
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, os, resource, sys, gc
os.environ["DIFFGUI_MEMORY_LIMIT"] = "off"
import numpy as np
from diffgui.engine import simulate_pair, run_zogy, run_sfft, run_hotpants
import diffgui.engine.common.resources as R
method, path, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
f = {"zogy": run_zogy, "sfft": run_sfft, "hotpants": run_hotpants}[method]
kw = dict(params)
if method == "hotpants":
    kw.setdefault("backend", "native")
if method != "zogy":
    kw["get_noise"] = True
# Warm up imports and plans on a tiny pair so that only the run's arrays are counted.
q = simulate_pair(shape=(64, 64), seed=1)
try:
    f(q.image, q.template, err=True, template_err=True,
      **{k: v for k, v in kw.items() if k != "kernel_shape"})
except Exception:
    pass
del q
with np.load(path) as z:
    img, tmpl = z["image"], z["template"]
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
f(img, tmpl, err=True, template_err=True, **kw)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
est = R.estimate_memory(method, img.shape, **kw)
print(json.dumps({"peak": after - before, "estimate": est}))
"""

CASES = [
    ("sfft", 256, 256, {"kernel_shape": [7, 7], "kernel_poly_order": 2}),
    ("sfft", 512, 512, {"kernel_shape": [7, 7], "kernel_poly_order": 2}),
    ("sfft", 1024, 1024, {"kernel_shape": [7, 7], "kernel_poly_order": 2}),
    ("sfft", 256, 256, {"kernel_shape": [15, 15], "kernel_poly_order": 3}),
    ("sfft", 512, 512, {"kernel_shape": [21, 21], "kernel_poly_order": 2}),
    ("sfft", 512, 512, {"kernel_shape": [15, 15], "kernel_poly_order": 4}),
    ("zogy", 256, 256, {}),
    ("zogy", 512, 512, {}),
    ("zogy", 1024, 1024, {}),
    ("zogy", 1024, 1024, {"nx": 2}),
    ("hotpants", 256, 256, {}),
    ("hotpants", 512, 512, {}),
    ("hotpants", 1024, 1024, {}),
    ("zogy", 2048, 2048, {}),
    ("hotpants", 2048, 2048, {}),
    ("sfft", 2048, 2048, {"kernel_shape": [9, 9], "kernel_poly_order": 2}),
]


def _pair_file(ny, nx, folder):
    path = os.path.join(folder, f"pair_{ny}x{nx}.npz")
    if not os.path.exists(path):
        from diffgui.engine import simulate_pair

        p = simulate_pair(shape=(ny, nx), seed=3)
        np.savez(path, image=p.image, template=p.template)
    return path


def main(argv=None):
    folder = tempfile.mkdtemp(prefix="diffgui-bench-memory-")
    print(f"{'method':9s} {'shape':>10s} {'params':40s} {'peak MB':>8s} {'est MB':>8s} {'ratio':>6s}")
    for method, ny, nx, params in CASES:
        out = subprocess.run([sys.executable, "-c", CHILD, method, _pair_file(ny, nx, folder),
                              json.dumps(params)], capture_output=True, text=True)
        if out.returncode:
            print(method, ny, nx, params, "FAILED", out.stderr[-500:])
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        peak, est = r["peak"] / 2**20, r["estimate"] / 2**20
        print(f"{method:9s} {f'{ny}x{nx}':>10s} {json.dumps(params):40s} {peak:8.1f} {est:8.1f} "
              f"{est / max(peak, 1e-9):6.2f}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
