"""Draw the KB13475 light curves as a PNG with pyqtgraph.

    QT_QPA_PLATFORM=offscreen python -m bench.plot_series SERIES_OUT docs/lightcurve-kb13475.png [--check J]

``SERIES_OUT`` holds ``lc-event-refined.ecsv`` / ``lc-constant-refined.ecsv`` written by
``bench.bench_lightcurve`` (else ``lc-event.ecsv`` / ``lc-constant.ecsv`` of
``bench.bench_series``). Panels: the event over the whole series with the smooth curve of
the acceptance test (cubic B-spline, knots one day apart); the night of the caustic exit
(HJD 2456508) with, as a red line, the event measured without any subtraction on the raw
frames (``--check``: the JSON of ``bench_lightcurve --raw-check``, aperture ratio mapped
to difference flux by its linear fit); the constant star with its weighted mean.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def _read(folder, kind):
    from astropy.table import Table

    for name in (f"lc-{kind}-refined.ecsv", f"lc-{kind}.ecsv"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            t = Table.read(p, format="ascii.ecsv")
            g = np.isfinite(t["flux"]) & np.isfinite(t["flux_err"]) & (t["flux_err"] > 0)
            return t[g]
    raise SystemExit(f"no lc-{kind}*.ecsv in {folder}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("png")
    p.add_argument("--check", help="bench_lightcurve --json output with raw_check")
    args = p.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6 import QtWidgets

    from bench.bench_lightcurve import smooth_chi2
    from diffgui.gui.series import render_light_curves

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    ev, co = _read(args.folder, "event"), _read(args.folder, "constant")
    te, fe, ee = (np.asarray(ev[c], float) for c in ("time", "flux", "flux_err"))
    chi_e, dof, model, nights = smooth_chi2(te, fe, ee)
    worst = max(nights, key=lambda n: nights[n][1])
    ev["model"] = model
    night = ev[(te > worst + 0.1) & (te < worst + 0.8)]
    night_label = f"night HJD {worst}: {len(night)} frames"
    if args.check:
        rc = json.load(open(args.check)).get("raw_check")
        if rc:
            raw = {os.path.basename(r[0]).replace(".fits", ""): (r[2] - rc["offset"]) / rc["slope"] for r in rc["rows"]}
            night["model"] = [raw.get(os.path.basename(f).replace("-diff.fits", ""), np.nan) for f in night["file"]]
            night_label += " (red: the event on the raw frames, aperture / comparison stars, no subtraction)"
    fc, ec = np.asarray(co["flux"], float), np.asarray(co["flux_err"], float)
    w = 1 / ec ** 2
    mean = float(np.sum(w * fc) / np.sum(w))
    chi_c = float(np.sum((fc - mean) ** 2 * w) / (len(co) - 1))
    co["model"] = np.full(len(co), mean)
    render_light_curves([ev, night, co],
                        [f"microlensing event (red: smooth curve, 1-day B-spline): chi2/dof {chi_e:.1f} ({dof} dof); "
                         f"night {worst} alone holds chi2 {nights[worst][1]:.0f}", night_label,
                         f"constant star of similar brightness: chi2/dof about its mean {chi_c:.2f}"],
                        args.png, size=(1000, 1000))
    print(f"{args.png}: event chi2/dof {chi_e:.2f} ({dof} dof), constant chi2/dof {chi_c:.2f}")
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
