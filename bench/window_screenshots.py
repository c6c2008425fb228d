"""Acceptance screenshots of the main window (issue 14), written into ``docs/``.

For each screen size and pair: open the window within the screen, run a method, wait for
the candidates, collapse the candidates dock, and write ``docs/window-<pair>-<W>x<H>.png``
with the measured figures printed (and in ``docs/window-screenshots.json``):

- ``main_fraction``: width of the main panel's drawn image over the window's width;
- ``visible``: every toolbar, dock button and status widget lies inside the window;
- ``elided``: panel titles drawn with an ellipsis (their full text is in the tooltip).

Run under a real X server of the wanted size (``Xvfb :71 -screen 0 1366x768x24``)::

    DISPLAY=:71 QT_QPA_PLATFORM=xcb python3 -m bench.window_screenshots --pair pydia
    DISPLAY=:72 QT_QPA_PLATFORM=xcb python3 -m bench.window_screenshots --pair jwst

With ``QT_QPA_PLATFORM=offscreen`` the window is resized to ``--size`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

PAIRS = {
    "pydia": dict(files=("pydia-bulge-kb13475/pairs/0130_vs_0178_sci.fits",
                         "pydia-bulge-kb13475/pairs/0130_vs_0178_ref.fits"), kwargs={}, method="sfft"),
    "jwst": dict(files=("jwst-nircam-a2744/science.fits", "jwst-nircam-a2744/template.fits"),
                 kwargs={"err": "jwst-nircam-a2744/science_noise.fits",
                         "template_err": "jwst-nircam-a2744/template_noise.fits"}, method="sfft"),
}


def measure(win) -> dict:
    """Figures of the window as it is drawn now."""
    from PyQt6 import QtWidgets

    g = win.grid
    main = g.current_main()
    vb = g.panels[main].vb
    disp = g.panels[main].display
    aspect = disp.shape[1] / disp.shape[0] if disp is not None else 1.0
    drawn = min(vb.width(), vb.height() * aspect)
    outside = []
    rect = win.rect()
    for w in win.findChildren(QtWidgets.QWidget):
        if w.isVisible() and not w.visibleRegion().isEmpty() and isinstance(
                w, (QtWidgets.QAbstractButton, QtWidgets.QComboBox, QtWidgets.QAbstractSpinBox,
                    QtWidgets.QProgressBar)):
            top_left = w.mapTo(win, w.rect().topLeft())
            bottom_right = w.mapTo(win, w.rect().bottomRight())
            if not (rect.contains(top_left) and rect.contains(bottom_right)):
                outside.append(f"{type(w).__name__} {w.objectName() or getattr(w, 'text', lambda: '')()}")
    elided = [p.title for r, p in g.panels.items() if p.container.isVisible() and "…" in p.label.shown_text()]
    return {"window": [win.width(), win.height()], "main_panel": main, "main_image_px": round(drawn, 1),
            "main_fraction": round(drawn / win.width(), 3), "controls_outside": outside, "elided_titles": elided}


def shoot(pair: str, out_dir: str, size=None, timeout: float = 300.0) -> dict:
    from PyQt6 import QtCore, QtWidgets

    from diffgui.gui.app import get_app
    from diffgui.gui.main_window import MainWindow
    from shared_paths import DATA

    app = get_app()
    spec = PAIRS[pair]
    tmp = tempfile.mkdtemp(prefix="diffgui-shots-")
    settings = QtCore.QSettings(os.path.join(tmp, "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    if size:
        win.resize(*size)
    win.show()
    app.processEvents()
    kwargs = {k: str(DATA / v) for k, v in spec["kwargs"].items()}
    assert win.open_pair(*(str(DATA / f) for f in spec["files"]), **kwargs)
    win.method_panel.set_method(spec["method"])
    done = []
    win.vetting.candidatesReady.connect(lambda *a: done.append(1))
    win.start_run()
    t0 = time.time()
    while not done and time.time() - t0 < timeout:
        app.processEvents()
        time.sleep(0.02)
    win.vetting_dock.hide()  # the candidates dock collapsed: the measure of issue 14
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    figures = measure(win)
    name = f"window-{pair}-{win.width()}x{win.height()}.png"
    path = os.path.join(out_dir, name)
    win.grab().save(path)
    figures["file"] = os.path.relpath(path, ROOT)
    figures["status"] = win.status_label.text()
    win.dispose()
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", choices=sorted(PAIRS), action="append")
    p.add_argument("--size", default=None, help="WxH (offscreen only)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs"))
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split("x")) if a.size else None
    results = []
    for pair in a.pair or sorted(PAIRS):
        fig = shoot(pair, a.out, size)
        print(json.dumps(fig))
        results.append(fig)
    log = os.path.join(a.out, "window-screenshots.json")
    old = json.load(open(log)) if os.path.exists(log) else []
    keep = [r for r in old if r.get("file") not in {f["file"] for f in results}]
    tmp = log + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(keep + results, fh, indent=1)
    os.replace(tmp, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
