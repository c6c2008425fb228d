"""Screenshots of the scorecard dock, the A/B view and the field diagnostics (issue 13).

Run from the repository root::

    QT_QPA_PLATFORM=offscreen python bench/shots_tuning.py [OUT_DIR]

Writes ``scorecard_dock.png``, ``ab_view.png`` and ``diagnostics.png`` (default
folder ``docs/``) after two native HOTPANTS runs (``ko 0`` and ``ko 2``) on a
simulated 512^2 pair whose science FWHM grows by 50 % across the field.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(out_dir="docs") -> list:
    from PyQt6 import QtCore, QtWidgets

    from diffgui.app.display import DisplayImage
    from diffgui.app.pair import Pair
    from diffgui.app.run import Run
    from diffgui.engine.simulation import simulate_pair
    from diffgui.gui.diagnostics_dialog import show_diagnostics
    from diffgui.gui.imaging import grab_png
    from diffgui.gui.main_window import MainWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    settings = QtCore.QSettings(os.path.join(out_dir, ".shots.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(1500, 950)
    win.show()
    sim = simulate_pair(shape=(512, 512), n_stars=700, image_fwhm=3.4, template_fwhm=2.5,
                        image_fwhm_gradient=(0.5, 0.2), psf="moffat", seed=21)
    pair = Pair(image=sim.image, template=sim.template, name="simulated varying PSF 512")
    win.set_pair(pair)
    levels = win.grid.levels_function()
    for ko in (0, 2):
        run = Run("hotpants", {"backend": "native", "image_gain": 2.0, "template_gain": 10.0,
                               "extra": {"ko": ko, "bgo": 1}}).execute(pair)
        disp = {}
        for k, v in run.arrays().items():
            disp[k] = DisplayImage.from_array(v)
            disp[k].quantize(levels(k, disp[k]))
        win._on_run_finished(run, disp)
        app.processEvents()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    win.scorecard_dock.resize(460, 620)
    win.scorecard.resize(460, 620)
    app.processEvents()
    paths.append(grab_png(win.scorecard, os.path.join(out_dir, "scorecard_dock.png")))
    ab = win.history.open_ab(0, 1)
    ab.divider.setValue(256)
    app.processEvents()
    paths.append(grab_png(ab, os.path.join(out_dir, "ab_view.png")))
    dlg = show_diagnostics(win)
    app.processEvents()
    paths.append(grab_png(dlg, os.path.join(out_dir, "diagnostics.png")))
    for w in (ab, dlg):
        w.close()
    win.dispose()
    if os.path.exists(os.path.join(out_dir, ".shots.ini")):
        os.remove(os.path.join(out_dir, ".shots.ini"))
    return paths


if __name__ == "__main__":
    print("\n".join(main(*sys.argv[1:])))
