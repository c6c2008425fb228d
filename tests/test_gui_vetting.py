"""The vetting view in the main window (pytest-qt, offscreen): keyboard labelling that survives a
killed window, filtering, sorting, centring, help, collections, presets and ``diffgui run``."""

import os
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from PyQt6 import QtCore, QtWidgets
from vetting_support import NO_METHOD, SHOTS, available_methods, standin_sfft, write_pair

from diffgui import cli
from diffgui.app import candidates as C
from diffgui.app import presets
from diffgui.engine.simulation import simulate_pair
from shared_paths import DATA

Key = QtCore.Qt.Key
ZTF = str(DATA / "alert-triplets" / "ztf_triplets_63x63.npz")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUI_DATA_DIR", str(tmp_path / "userdata"))


@pytest.fixture(scope="module")
def sim():
    return simulate_pair(shape=(256, 256), transients=24, transient_snr_range=(8.0, 60.0), seed=3)


@pytest.fixture
def pair_files(tmp_path, sim):
    return write_pair(tmp_path, sim)


@pytest.fixture
def standin():
    with standin_sfft() as info:
        yield info


def _window(qtbot, qsettings, keep=True):
    from diffgui.gui.main_window import MainWindow

    win = MainWindow(settings=qsettings)
    win.resize(1500, 900)
    if keep:
        qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def _run_and_find(qtbot, win, files, method="sfft", min_items=1, values=None):
    assert win.open_pair(*files)
    win.method_panel.populate()
    win.method_panel.set_method(method)
    if values:
        win.form.set_values(values)
    with qtbot.waitSignal(win.vetting.candidatesReady, timeout=30000):
        assert win.start_run()
    view = win.vetting_view
    assert len(view.source) >= min_items
    view.table.setFocus()
    return view


def _key(qtbot, view, key, text=""):
    qtbot.keyClick(view.table, key)


def test_vet_20_with_the_keyboard_then_kill_the_window_and_reopen(qtbot, qsettings, errors, standin, pair_files):
    win = _window(qtbot, qsettings, keep=False)
    view = _run_and_find(qtbot, win, pair_files, min_items=20)
    store_path = view.store.path
    assert store_path == C.labels_path_for(win.pair) and os.path.dirname(store_path) == os.path.dirname(pair_files[0])
    expected = {}
    keys = {Key.Key_R: "real", Key.Key_B: "bogus", Key.Key_S: "skip"}
    pattern = [Key.Key_R, Key.Key_B, Key.Key_B, Key.Key_S, Key.Key_R]
    undone = False
    i = 0
    while len(expected) < 20:
        k = pattern[i % len(pattern)]
        i += 1
        key_before = view.current_key()
        _key(qtbot, view, k)
        expected[key_before] = keys[k]
        assert C.LabelStore(store_path).label(key_before) == keys[k]   # on disk after every key
        if len(expected) == 7 and not undone:                           # undo the 7th, then label it again
            _key(qtbot, view, Key.Key_U)
            assert view.current_key() == key_before
            assert C.LabelStore(store_path).label(key_before) is None
            del expected[key_before]
            undone = True
        if len(expected) == 12:                                        # previous / next keep labels intact
            _key(qtbot, view, Key.Key_P)
            _key(qtbot, view, Key.Key_N)
    assert undone and win.tabs.currentWidget() is win.grid               # B labelled, it did not open blink
    on_disk = C.LabelStore(store_path).records
    assert {k: r["label"] for k, r in on_disk.items()} == expected
    assert "20 labelled" in view.info.text()

    # Drop the window without closing it: no closeEvent, nothing saved on exit; only what
    # was written after each key survives (test_labels_survive_a_killed_process kills a real one).
    win.hide()
    win.deleteLater()
    del win
    QtWidgets.QApplication.processEvents()

    win2 = _window(qtbot, qsettings)
    view2 = _run_and_find(qtbot, win2, pair_files, min_items=20)
    shown = {view2.model.key(r): view2.model.label(r) for r in range(view2.model.rowCount())}
    assert {k: v for k, v in shown.items() if v} == expected
    # the label column shows them, and undo after reopening only undoes this session's labels
    col = view2.model.columns.index("label")
    texts = [view2.proxy.index(r, col).data() for r in range(view2.proxy.rowCount())]
    assert sum(1 for t in texts if t) == 20
    view2.set_unlabelled_only(True)
    key = view2.current_key()
    assert key not in expected and view2.proxy.rowCount() == len(view2.source) - 20
    _key(qtbot, view2, Key.Key_R)
    assert view2.proxy.rowCount() == len(view2.source) - 21 and view2.current_key() != key
    _key(qtbot, view2, Key.Key_U)
    assert view2.store.label(key) is None and view2.current_key() == key
    win2.controller.shutdown(2000)


def test_sorting_centring_help_tooltips_and_export(qtbot, qsettings, errors, standin, pair_files, tmp_path):
    win = _window(qtbot, qsettings)
    view = _run_and_find(qtbot, win, pair_files, min_items=10)
    m = view.model
    # sorted by S/N, strongest first, by default
    snr = [view.proxy.index(r, m.columns.index("snr")).data(QtCore.Qt.ItemDataRole.UserRole + 1)
           for r in range(view.proxy.rowCount())]
    assert snr == sorted(snr, reverse=True)
    fcol = m.columns.index("fwhm")
    view.table.horizontalHeader().sectionClicked.emit(fcol)   # a click on the header
    view.table.sortByColumn(fcol, QtCore.Qt.SortOrder.AscendingOrder)
    vals = [view.proxy.index(r, fcol).data(QtCore.Qt.ItemDataRole.UserRole + 1) for r in range(view.proxy.rowCount())]
    assert vals == sorted(vals)
    # selecting a row centres every linked panel on the candidate
    view.select_proxy_row(3)
    x, y = view.source.position(view.current_row())
    (x0, x1), (y0, y1) = win.grid.master.viewRange()
    assert abs((x0 + x1) / 2 - x) < 0.5 and abs((y0 + y1) / 2 - y) < 0.5 and (x1 - x0) < 120
    (a0, a1), _ = win.grid.panels["diff"].vb.viewRange()
    assert (a0, a1) == pytest.approx((x0, x1))
    assert win.grid.cursor == pytest.approx((x, y))
    # the help overlay and the tooltips name the keys
    _key(qtbot, view, Key.Key_Question)
    assert view.overlay.isVisible() and "Vetting keys" in view.overlay.text()
    _key(qtbot, view, Key.Key_Escape)
    assert not view.overlay.isVisible()
    assert win.controller.running is False   # Esc in the view did not reach the window's Cancel
    for name, letter in (("real", "R"), ("bogus", "B"), ("skip", "S"), ("undo", "U"), ("next", "N"), ("previous", "P")):
        assert f"({letter})" in view.buttons[name].toolTip()
    # export with the label just given
    view.table.setFocus()
    _key(qtbot, view, Key.Key_R)
    csv = win.vetting.export("csv", str(tmp_path / "c.csv"))
    reg = win.vetting.export("regions", str(tmp_path / "c.reg"))
    t = Table.read(csv, format="ascii.csv")
    assert len(t) == len(view.source) and list(t["label"]).count("real") == 1
    assert set(t["preset_hash"]) == {presets.preset_hash("sfft", win.run.params)}
    assert np.isfinite(t["ra"]).all()
    assert open(reg).read().count("color=green") == 1


@pytest.mark.skipif(not os.path.exists(ZTF), reason="shared alert-triplet data not present")
def test_ztf_collection_in_the_view(qtbot, qsettings, errors, tmp_path, request):
    # a link in a read-only folder of our own: the shared folder may be writable on some
    # machines, and tests never write there
    ro = tmp_path / "readonly"
    ro.mkdir()
    (ro / os.path.basename(ZTF)).symlink_to(ZTF)
    ro.chmod(0o555)
    request.addfinalizer(lambda: ro.chmod(0o755))
    win = _window(qtbot, qsettings)
    assert win.vetting.open_collection(str(ro / os.path.basename(ZTF)))
    view = win.vetting_view
    assert view.proxy.rowCount() == 400 and "drb" in view.model.columns
    col = view.model.columns.index("drb")
    first = view.proxy.index(0, col).data(QtCore.Qt.ItemDataRole.UserRole + 1)
    assert first == pytest.approx(float(np.max(np.load(ZTF)["drb"])))   # sorted by machine score
    view.table.setFocus()
    key = view.current_key()
    _key(qtbot, view, Key.Key_B)
    assert C.LabelStore(view.store.path).label(key) == "bogus"
    assert view.store.path.startswith(os.environ["DIFFGUI_DATA_DIR"])  # the shared data stay untouched
    assert not view.buttons["regions"].isEnabled()
    os.makedirs(SHOTS, exist_ok=True)
    assert view.grab().save(os.path.join(SHOTS, "vetting-ztf.png"))


def _preset_round_trip(qtbot, win, pair_files, tmp_path, method, values=None):
    view = _run_and_find(qtbot, win, pair_files, method=method, values=values)
    assert view is not None
    path = tmp_path / "window.toml"
    pre = win.vetting.save_preset(str(path))
    out = tmp_path / "cli.fits"
    rc = cli.main(["run", "--preset", str(path), *pair_files, "-o", str(out), "-q"])
    assert rc == 0
    with fits.open(out) as h:
        np.testing.assert_array_equal(h["DIFF"].data, win.run.results["diff"].astype(np.float32))
    return pre


def test_preset_saved_from_the_window_gives_the_same_difference_with_diffgui_run(qtbot, qsettings, errors, standin,
                                                                               pair_files, tmp_path):
    win = _window(qtbot, qsettings)
    pre = _preset_round_trip(qtbot, win, pair_files, tmp_path, "sfft", {"kernel_shape": (5, 5), "ridge": 3e-6})
    assert pre.params["kernel_shape"] == (5, 5) and pre.params["ridge"] == 3e-6
    # loading it into a fresh form gives the same values, and "Copy as Python" says the same
    win.form.reset_defaults()
    win.vetting.load_preset(pre.path)
    assert win.current_params() == pre.params
    text = win.vetting.copy_python()
    assert QtWidgets.QApplication.clipboard().text() == text
    assert "run_sfft(" in text and "kernel_shape=(5, 5)" in text and "ridge=3e-06" in text


@pytest.mark.parametrize("method", available_methods() or
                         NO_METHOD)
def test_preset_bit_for_bit_with_each_real_method(qtbot, qsettings, errors, pair_files, tmp_path, method):
    win = _window(qtbot, qsettings)
    _preset_round_trip(qtbot, win, pair_files, tmp_path, method)
    win.controller.shutdown(2000)


def test_screenshot_of_the_vetting_view(qtbot, qsettings, errors, standin, pair_files, tmp_path):
    win = _window(qtbot, qsettings)
    view = _run_and_find(qtbot, win, pair_files, min_items=10)
    win.resizeDocks([win.vetting_dock], [620], QtCore.Qt.Orientation.Horizontal)
    for k in (Key.Key_R, Key.Key_B, Key.Key_R, Key.Key_S, Key.Key_B):
        _key(qtbot, view, k)
    qtbot.wait(50)
    shot = tmp_path / "vetting.png"
    assert view.grab().save(str(shot))
    wshot = tmp_path / "vetting-window.png"
    assert win.grab().save(str(wshot))
    assert shot.stat().st_size > 10_000
    os.makedirs(SHOTS, exist_ok=True)
    shutil.copy(shot, os.path.join(SHOTS, "vetting.png"))
    shutil.copy(wshot, os.path.join(SHOTS, "vetting-window.png"))
    view.toggle_help(True)
    qtbot.wait(20)
    view.grab().save(os.path.join(SHOTS, "vetting-help.png"))
