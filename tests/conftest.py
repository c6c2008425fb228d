"""Shared test set-up: Qt runs offscreen, and fixtures for the app and GUI tests.

``QT_QPA_PLATFORM`` must be set before anything imports Qt, hence at the top of
this module. Every test gets its own ``$DIFFGUI_DATA_DIR`` (label files of
pairs without a writable folder), so nothing is written to ~/.local/share. The ``fake_method`` fixture registers a small test double in the
method registry (never shipped): tests of the worker and panels use it while
the real engine methods land, and the tests that run real methods are
parametrised over whatever the registry reports available.
"""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# The fork server of diffgui's child processes imports these once (they hold the
# test doubles), instead of every child importing them (and pytest) again per run.
os.environ.setdefault("DIFFGUI_PRELOAD", "conftest,vetting_support")

import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _fake_subtract(image, template, mask=None, template_mask=None, err=None, template_err=None,
                   scale=1.0, delay=0.0, fail=False, stubborn=0.0, verbose=False, *, cancel=None):
    """Test double of an engine method: diff = image - scaled, sky-matched template; with checkpoints."""
    from diffgui.engine.errors import FitError, check_cancel, make_logger

    log = make_logger(verbose)
    log("fake: starting")
    t_end = time.perf_counter() + float(delay)
    while time.perf_counter() < t_end:
        check_cancel(cancel)
        time.sleep(0.01)
    check_cancel(cancel)
    time.sleep(float(stubborn))  # work that never looks at cancel (only a kill stops it)
    if fail:
        raise FitError("fake: the kernel fit did not converge (singular matrix)")
    img = np.asarray(image, float)
    tmpl = np.asarray(template, float)
    conv = scale * (tmpl - np.median(tmpl)) + np.median(img)  # matched to the science sky
    diff = img - conv
    noise = np.full_like(img, max(float(np.std(diff)), 1e-9))
    scorr = diff / noise
    yy, xx = np.mgrid[-3:4, -3:4]
    kernel = np.exp(-(xx ** 2 + yy ** 2) / 4.0)
    log("fake: done")
    return [diff, scorr, noise, conv, kernel / kernel.sum()]


def _fake_specs():
    from diffgui.engine.params import ParamSpec

    return [
        ParamSpec("scale", "float", 1.0, "Template scale.", "Fitting", "", (0, None), common=True),
        ParamSpec("delay", "float", 0.0, "Seconds to pretend to work.", "Execution", "s", (0, None)),
        ParamSpec("fail", "bool", False, "Raise a FitError.", "Execution"),
        ParamSpec("stubborn", "float", 0.0, "Seconds of work without cancel checks.", "Execution", "s"),
    ]


@pytest.fixture(autouse=True)
def _user_data_dir(tmp_path, monkeypatch):
    """diffgui's own files (labels of demo pairs ...) go to a per-test folder."""
    monkeypatch.setenv("DIFFGUI_DATA_DIR", str(tmp_path / "userdata"))


@pytest.fixture(autouse=True)
def _destroy_closed_windows(request):
    """After a GUI test, destroy the windows pytest-qt closed (it only calls deleteLater),
    here and now, rather than leaving them to the garbage collector (see MainWindow.dispose)."""
    yield
    if "qtbot" not in request.fixturenames and "qapp" not in request.fixturenames:
        return
    from PyQt6 import QtCore, QtWidgets

    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    QtWidgets.QApplication.processEvents()


@pytest.fixture
def fake_method():
    """Register the test double as method 'fake'; removed afterwards."""
    from diffgui.app import methods

    info = methods.MethodInfo("fake", "Fake", func=_fake_subtract, specs=_fake_specs,
                              outputs=("diff", "scorr", "noise", "convolved", "kernel"))
    methods.register(info, replace=True)
    yield info
    methods.unregister("fake")


@pytest.fixture
def small_pair_arrays():
    """A 64x64 science/template pair with one transient at (40, 20)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    star = 500 * np.exp(-((xx - 20) ** 2 + (yy - 30) ** 2) / (2 * 1.5 ** 2))
    tmpl = 100 + star + rng.normal(0, 3, (64, 64))
    sci = 100 + star + rng.normal(0, 3, (64, 64))
    sci += 300 * np.exp(-((xx - 40) ** 2 + (yy - 20) ** 2) / (2 * 1.5 ** 2))
    return sci, tmpl


@pytest.fixture
def fits_pair(tmp_path, small_pair_arrays):
    """Paths of the small pair written as big-endian float32 FITS with a celestial WCS."""
    from astropy.io import fits

    sci, tmpl = small_pair_arrays
    hdr = fits.Header()
    hdr.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=32.0, CRPIX2=32.0, CRVAL1=150.0,
               CRVAL2=2.0, CDELT1=-1e-4, CDELT2=1e-4, CUNIT1="deg", CUNIT2="deg")
    paths = []
    for name, arr in (("sci.fits", sci), ("tmpl.fits", tmpl)):
        p = tmp_path / name
        fits.PrimaryHDU(arr.astype(">f4"), header=hdr).writeto(p)
        paths.append(str(p))
    return paths


@pytest.fixture
def qsettings(tmp_path):
    """A QSettings in a temporary INI file (recent pairs must not touch the user's)."""
    from PyQt6 import QtCore

    return QtCore.QSettings(str(tmp_path / "diffgui.ini"), QtCore.QSettings.Format.IniFormat)


@pytest.fixture
def errors(monkeypatch):
    """Record QMessageBox calls instead of blocking; returns the list of (title, text)."""
    from PyQt6 import QtWidgets

    seen = []

    def fake(parent, title, text, *a, **k):
        seen.append((title, text))
        return QtWidgets.QMessageBox.StandardButton.Ok

    for name in ("critical", "warning", "information"):
        monkeypatch.setattr(QtWidgets.QMessageBox, name, staticmethod(fake))
    return seen


@pytest.fixture
def window(qtbot, qsettings, errors):
    """A shown main window with a temporary settings file and patched message boxes."""
    from diffgui.gui.main_window import MainWindow

    win = MainWindow(settings=qsettings)
    win.resize(1200, 760)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    from PyQt6 import sip

    if not sip.isdeleted(win):
        win.controller.shutdown(2000)
        win.dispose()
