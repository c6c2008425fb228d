"""GUI speed on a large pair: load + first display, blink frame switch, linked pan/zoom, event-loop stalls.

``python -m bench gui [--size 4096] [--method NAME]`` (offscreen unless QT_QPA_PLATFORM is set).

- ``load_display_s``: File > Open of a SIZE^2 float32 FITS pair until every panel
  has been drawn once (a grab of the panel grid forces the paint).
- ``blink_switch_ms``: median and max time of one blink step including the paint.
- ``pan_ms``/``zoom_ms``: one pan or zoom step of the linked grid with all seven
  panels filled, including the paint of every panel (median and max).
- ``stall_max_*_ms``: longest gap between 10 ms timer ticks of the Qt event loop
  while the subtraction runs in the worker, while its results are put into the
  panels and painted, and during ``--settle`` seconds after that (where other
  views react to the new run, e.g. candidate finding; the watch goes on until the
  Candidates dock has shown its result, ``candidates_shown_after_s``). The
  method is ``--method`` if available, else the first available one, else a
  stand-in engine function (FFT convolution + arithmetic on the pair, about as
  heavy per pixel as a real method) defined here, in the benchmark only.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from bench import register

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _args(p):
    p.add_argument("--size", type=int, default=4096, help="image side in pixels (default 4096)")
    p.add_argument("--method", default=None, help="method for the stall test (default: first available)")
    p.add_argument("--frames", type=int, default=30, help="blink/pan/zoom steps timed (default 30)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds the event loop is still watched after the results are shown (default 5)")


def _write_pair(folder, size, seed):
    """A SIZE^2 float32 pair sharing its stars (template sharper and fainter), with some NaNs."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    nstar = max(200, size * size // 3000)
    xs, ys = rng.uniform(8, size - 8, nstar), rng.uniform(8, size - 8, nstar)
    flux = 10 ** rng.uniform(2.5, 5.0, nstar)
    paths = []
    for name, sky, sigma, scale in (("sci.fits", 1000.0, 1.6, 1.0), ("tmpl.fits", 800.0, 1.2, 0.9)):
        img = rng.normal(sky, 8.0, (size, size)).astype(np.float32)
        r = int(np.ceil(4 * sigma))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        for x, y, f in zip(xs, ys, flux):
            ix, iy = int(x), int(y)
            g = np.exp(-((xx - (x - ix)) ** 2 + (yy - (y - iy)) ** 2) / (2 * sigma ** 2))
            img[iy - r:iy + r + 1, ix - r:ix + r + 1] += (scale * f / g.sum()) * g
        img[rng.integers(0, size, 100), rng.integers(0, size, 100)] = np.nan
        p = os.path.join(folder, name)
        fits.PrimaryHDU(img.astype(">f4")).writeto(p)
        paths.append(p)
    return paths


def _stand_in(image, template, mask=None, template_mask=None, err=None, template_err=None,
              verbose=False, *, cancel=None):
    """Benchmark-only engine stand-in: Gaussian-kernel FFT convolution and subtraction."""
    from diffgui.engine.errors import check_cancel, make_logger
    from diffgui.engine.common.fft import fft_convolve

    log = make_logger(verbose)
    yy, xx = np.mgrid[-10:11, -10:11]
    k = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.2 ** 2))
    k /= k.sum()
    img = np.nan_to_num(np.asarray(image, float))
    tmpl = np.nan_to_num(np.asarray(template, float))
    conv = None
    for i in range(4):  # a few passes, like a kernel fit's iterations
        check_cancel(cancel)
        log(f"pass {i + 1}/4")
        conv = fft_convolve(tmpl, k) * (np.median(img) / np.median(tmpl))
    diff = img - conv
    noise = np.full_like(diff, 1.4826 * np.median(np.abs(diff - np.median(diff))))
    return [diff, diff / noise, noise, conv, k]


def _median_max(ts):
    return 1000 * statistics.median(ts), 1000 * max(ts)


@register("gui", help="GUI speed: 4096^2 load+display, blink switch, linked pan/zoom, event-loop stalls",
          arguments=_args)
def bench_gui(args):
    from PyQt6 import QtCore

    from diffgui.app import methods
    from diffgui.gui.app import get_app
    from diffgui.gui.main_window import MainWindow

    app = get_app()
    tmp = tempfile.mkdtemp(prefix="bench-gui-")
    sci, tmpl = _write_pair(tmp, args.size, args.seed)
    settings = QtCore.QSettings(os.path.join(tmp, "s.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.show_error = lambda title, msg: print(f"[error] {title}: {msg}")
    win.resize(1600, 1000)
    win.show()
    for _ in range(5):
        app.processEvents()

    loads = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        win.open_pair(sci, tmpl)
        app.processEvents()
        win.grid.grab()
        loads.append(time.perf_counter() - t0)

    # the run, timing the event loop meanwhile
    avail = methods.available()
    method = args.method if args.method in avail else (avail[0] if avail else None)
    if method is None:
        methods.register(methods.MethodInfo("bench-stand-in", "Stand-in", func=_stand_in, specs=lambda: [],
                                            outputs=("diff", "scorr", "noise", "convolved", "kernel")),
                         replace=True)
        win.method_panel.populate()
        method = "bench-stand-in"
    win.method_panel.set_method(method)
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append((now - last[0], now))
        last[0] = now

    timer = QtCore.QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    done = []
    win.controller.finished.connect(lambda run, disp: setattr(win, "_bench_engine_done", time.perf_counter()))
    win.runFinished.connect(lambda run: done.append(run))
    win.controller.failed.connect(lambda run, msg: done.append(msg))
    found = []  # (time, number) when the Candidates dock has shown the search's result
    vetting = getattr(win, "vetting", None)
    if vetting is not None:
        vetting.candidatesReady.connect(lambda cset: found.append((time.perf_counter(), len(cset))))
    t_run = time.perf_counter()
    timer.start()
    win.start_run()
    while not done:
        app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.001)
    win.grid.grab()  # first paint of the results belongs to the measured period
    app.processEvents()
    t_end = time.perf_counter()
    t_start, t_run = t_run, t_end - t_run
    settle_end = t_end + args.settle  # what other views do after a run (candidate finding)
    while time.perf_counter() < settle_end or (vetting is not None and not found
                                               and time.perf_counter() < t_end + 120):
        app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.001)
        if found:  # watch at least 0.5 s after the candidates are shown
            settle_end = max(settle_end, found[0][0] + 0.5)
    settle_end = time.perf_counter()
    timer.stop()
    t_engine = getattr(win, "_bench_engine_done", t_end)

    def worst(t0, t1):
        sel = [g for g, t in gaps if t0 <= t <= t1]
        return 1000 * max(sel) if sel else 0.0

    stall_engine = worst(t_start, t_engine)
    stall_display = worst(t_engine, t_end)
    stall_settle = worst(t_end + 1e-9, settle_end)

    # linked pan and zoom, all panels filled
    g = win.grid
    g.reset_view()
    app.processEvents()
    pans, zooms = [], []
    for i in range(args.frames):
        t0 = time.perf_counter()
        g.master.translateBy(x=args.size / 200.0 * (1 if i % 2 else -1), y=0)
        g.viewport().repaint()
        app.processEvents()
        pans.append(time.perf_counter() - t0)
    for i in range(args.frames):
        t0 = time.perf_counter()
        f = 0.8 if i < args.frames // 2 else 1.25
        g.master.scaleBy(s=(f, f))
        g.viewport().repaint()
        app.processEvents()
        zooms.append(time.perf_counter() - t0)

    # blink
    win.show_blink(True)
    app.processEvents()
    b = win.blink
    b.view.grab()
    blinks = []
    for _ in range(args.frames):
        t0 = time.perf_counter()
        b.step(1)
        b.view.viewport().repaint()
        app.processEvents()
        blinks.append(time.perf_counter() - t0)
    win.close()
    pan_med, pan_max = _median_max(pans)
    zoom_med, zoom_max = _median_max(zooms)
    blink_med, blink_max = _median_max(blinks)
    return {
        "size": args.size, "method": method, "panels": len(g.roles),
        "load_display_s": statistics.median(loads), "load_display_max_s": max(loads),
        "blink_switch_ms": blink_med, "blink_switch_max_ms": blink_max,
        "pan_ms": pan_med, "pan_max_ms": pan_max, "zoom_ms": zoom_med, "zoom_max_ms": zoom_max,
        "run_and_display_s": t_run, "engine_s": t_engine - t_start,
        "stall_max_during_engine_ms": stall_engine, "stall_max_showing_results_ms": stall_display,
        "stall_max_after_run_ms": stall_settle, "ticks": len(gaps),
        "candidates_shown_after_s": (found[0][0] - t_end) if found else float("nan"),
        "candidates": found[0][1] if found else -1,
    }
