"""Draw the light curves of ``bench_series`` (lc-event.ecsv, lc-constant.ecsv) as a PNG with pyqtgraph.

    QT_QPA_PLATFORM=offscreen python -m bench.plot_series OUTDIR docs/lightcurve-kb13475.png
"""

from __future__ import annotations

import os
import sys

import numpy as np


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    folder, png = argv[0], argv[1]
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from astropy.table import Table
    from PyQt6 import QtWidgets

    from bench.bench_series import caustic_night, nightly_chi2
    from diffgui.gui.series import render_light_curves

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    ev = Table.read(os.path.join(folder, "lc-event.ecsv"), format="ascii.ecsv")
    co = Table.read(os.path.join(folder, "lc-constant.ecsv"), format="ascii.ecsv")
    g = np.isfinite(ev["flux"]) & np.isfinite(ev["flux_err"]) & (ev["flux_err"] > 0)
    ev = ev[g]
    te, fe, ee = (np.asarray(ev[c], float) for c in ("time", "flux", "flux_err"))
    chi_e, dof, model = nightly_chi2(te, fe, ee)
    steep, _ = caustic_night(te, fe)  # the caustic crossing: a drop within one night
    chi_s, dof_s, _ = nightly_chi2(te, fe, ee, skip_nights=(steep,))
    ev["model"] = model
    gc = np.isfinite(co["flux"]) & np.isfinite(co["flux_err"]) & (co["flux_err"] > 0)
    co = co[gc]
    w = 1 / np.asarray(co["flux_err"], float) ** 2
    mean = float(np.sum(w * co["flux"]) / np.sum(w))
    chi_c = float(np.sum((co["flux"] - mean) ** 2 * w) / (len(co) - 1))
    co["model"] = np.full(len(co), mean)
    render_light_curves([ev, co], [f"microlensing event (red: quadratic per night): chi2/dof {chi_e:.2f}; "
                                   f"{chi_s:.2f} without the caustic night {steep}",
                                   f"constant star of similar brightness: chi2/dof about the mean {chi_c:.2f}"],
                        png, size=(1000, 760))
    print(f"{png}: event chi2/dof {chi_e:.2f}, constant chi2/dof {chi_c:.2f}")
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
