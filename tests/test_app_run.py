"""The Qt-free application model: method registry, Run, results files, display maths, kernels."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.io import fits

from diffgui.app import display, kernels, methods
from diffgui.app.pair import Pair
from diffgui.app.results_io import load_run, save_run
from diffgui.app.run import Run
from diffgui.engine.errors import Cancelled, FitError, InputError


# ---- registry ---------------------------------------------------------------------------
def test_registry_lists_the_three_methods_and_reports_stubs_unavailable():
    assert {"hotpants", "zogy", "sfft"} <= set(methods.names())
    from diffgui.engine import api as subtraction

    for name in ("hotpants", "zogy", "sfft"):
        info = methods.get(name)
        ok, reason = info.availability()
        fn = getattr(subtraction, info.function)
        if methods._is_stub(fn):
            assert not ok and "not implemented" in reason
        assert name in methods.available() or reason


def test_stub_detection():
    def stub(a, b=1):
        """Doc."""
        raise NotImplementedError("later")

    def real(a):
        if a:
            raise NotImplementedError
        return a

    assert methods._is_stub(stub)
    assert not methods._is_stub(real)
    assert methods.get("ZOGY").name == "zogy"
    with pytest.raises(InputError, match="unknown method 'nope'"):
        methods.get("nope")


def test_missing_module_makes_a_method_unavailable():
    info = methods.MethodInfo("x", "X", func=lambda image, template: image, modules=("diffgui.engine.no_such",))
    ok, reason = info.availability()
    assert not ok and "no_such" in reason


def test_parse_outputs_by_name():
    info = methods.MethodInfo("x", "X", outputs=("diff", "scorr", "psf"))
    a, b = np.zeros((2, 2)), np.ones((2, 2))
    assert set(info.parse([a, b])) == {"diff", "scorr"}
    assert info.parse(a)["diff"] is a
    with pytest.raises(FitError, match="produced no result"):
        info.parse(None)


# ---- Run ----------------------------------------------------------------------------------
def test_run_executes_and_serialises(fake_method, small_pair_arrays):
    pair = Pair(*small_pair_arrays)
    lines = []
    run = Run("fake", {"scale": 0.5, "delay": 0.0, "fail": False}).execute(pair, verbose=lines.append)
    assert run.status == "done" and run.timings["total"] >= 0
    expected = pair.image - 0.5 * (pair.template - np.median(pair.template)) - np.median(pair.image)
    np.testing.assert_allclose(run.results["diff"], expected)
    assert set(run.arrays()) == {"diff", "scorr", "noise", "convolved", "kernel"}
    assert lines == ["fake: starting", "fake: done"] == run.log
    d = json.loads(run.to_json())
    assert d["params"]["scale"] == 0.5 and d["provenance"]["pair"]["shape"] == [64, 64]
    assert "numpy" in d["provenance"] and d["status"] == "done"
    back = Run.from_dict(d)
    assert back.params == run.params and back.method == "fake" and back.log == run.log


def test_run_failure_and_cancel_are_recorded(fake_method, small_pair_arrays):
    pair = Pair(*small_pair_arrays)
    run = Run("fake", {"fail": True})
    with pytest.raises(FitError):
        run.execute(pair)
    assert run.status == "failed" and "did not converge" in run.error
    run = Run("fake", {"delay": 5.0})
    with pytest.raises(Cancelled):
        run.execute(pair, cancel=lambda: True)
    assert run.status == "cancelled" and run.timings["total"] < 1.0


def test_unknown_parameter_is_an_input_error(fake_method, small_pair_arrays):
    with pytest.raises(InputError, match="does not accept parameter.*bogus"):
        Run("fake", {"bogus": 1}).execute(Pair(*small_pair_arrays))


# ---- results file -------------------------------------------------------------------------
def test_results_mef_roundtrip_with_params_in_header(tmp_path, fake_method, small_pair_arrays, fits_pair):
    from diffgui.app.pair import load_pair

    pair = load_pair(*fits_pair)
    run = Run("fake", {"scale": 0.75, "delay": 0.0, "fail": False}).execute(pair)
    path = tmp_path / "out.fits"
    save_run(run, path, header=pair.image_header)
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        assert names[:1] == ["PRIMARY"] and {"DIFF", "SCORR", "NOISE", "CONVOLVED", "KERNEL", "RUNINFO", "LOG"} <= set(names)
        hdr = hdul[0].header
        assert hdr["DGMETHOD"] == "fake" and hdr["HIERARCH DG PAR SCALE"] == 0.75
        assert hdul["DIFF"].header["CTYPE1"] == "RA---TAN"
        assert hdul["DIFF"].data.dtype.kind == "f"
    back = load_run(path)
    assert back.params == {"scale": 0.75, "delay": 0.0, "fail": False}
    np.testing.assert_allclose(back.results["diff"], run.results["diff"], rtol=1e-6, atol=1e-4)
    assert back.results["kernel"].shape == (7, 7)


def test_results_never_overwrite_silently(tmp_path, fake_method, small_pair_arrays):
    run = Run("fake", {}).execute(Pair(*small_pair_arrays))
    path = tmp_path / "out.fits"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="already exists"):
        save_run(run, path)
    assert path.read_text() == "precious"
    save_run(run, path, overwrite=True)
    assert fits.getval(path, "DGMETHOD") == "fake"
    assert [p.name for p in tmp_path.iterdir()] == ["out.fits"]  # no temporary file left
    with pytest.raises(InputError, match="no results"):
        save_run(Run("fake"), tmp_path / "empty.fits")


# ---- display maths --------------------------------------------------------------------------
def test_display_image_replaces_nans_and_keeps_source_values():
    a = np.arange(100.0).reshape(10, 10)
    a[2, 3] = np.nan
    d = display.DisplayImage.from_array(a)
    assert d.data.dtype == np.float32 and np.isfinite(d.data).all()
    assert d.data[2, 3] == np.float32(np.nanmedian(a))
    assert d.value_at(4.4, 5.2) == 54.0 and d.value_at(-1, 0) is None
    assert np.isnan(d.value_at(3, 2))


def test_limits_modes():
    rng = np.random.default_rng(0)
    v = rng.normal(100, 5, 200_000)
    lo, hi = display.limits(v, "99%")
    assert lo == pytest.approx(100 - 2.576 * 5, abs=0.3) and hi == pytest.approx(100 + 2.576 * 5, abs=0.3)
    zlo, zhi = display.limits(v, "zscale")
    assert zlo < 100 < zhi and zhi - zlo < 60
    assert display.limits(v, "minmax") == (v.min(), v.max())
    lo, hi = display.symmetric_limits(v - 100, 5)
    assert lo == -hi and hi == pytest.approx(25, rel=0.02)
    assert display.limits(np.zeros(10), "zscale") == (-0.5, 0.5)  # flat data gives a usable range
    with pytest.raises(ValueError):
        display.limits(v, "bogus")


def test_stretch_index_monotonic_and_diverging_keeps_centre():
    for s in display.STRETCHES:
        idx = display.stretch_index(s)
        assert idx[0] == 0 and idx[-1] == 255 and np.all(np.diff(idx) >= 0)
        div = display.stretch_index(s, diverging=True)
        assert div[0] == 0 and div[-1] == 255 and np.all(np.diff(div) >= 0)
        np.testing.assert_array_equal(div + div[::-1], 255)  # symmetric: zero stays at the centre colour
    assert display.stretch_index("sqrt")[64] > 64  # faint end brightened
    assert display.stretch_index("log")[26] > display.stretch_index("asinh")[26] > 26


# ---- kernels --------------------------------------------------------------------------------
def test_kernel_at_and_grid():
    class Varying:
        def evaluate_kernel_at(self, x, y, shape):
            k = np.zeros((5, 5))
            k[2, 2] = 1 + x / shape[1]
            return k

    res = {"kernel": Varying()}
    assert kernels.has_kernel(res)
    assert kernels.kernel_at(res, 50, 0, (100, 100))[2, 2] == pytest.approx(1.5)
    grid = kernels.kernel_grid(res, (90, 90), n=3)
    assert grid.shape == (17, 17) and np.isnan(grid[5, 0])
    assert grid[2, 2] < grid[2, 14]  # right column evaluated at larger x
    psf = {"psf": np.ones((3, 3))}
    assert kernels.kernel_title(psf) == "Difference PSF"
    assert kernels.kernel_at(psf, 0, 0, (10, 10)).shape == (3, 3)
    assert not kernels.has_kernel({})


# ---- no Qt in the engine and the application model ---------------------------------------------
def test_engine_and_app_import_without_qt():
    code = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in ('PyQt6', 'PyQt5', 'PySide6', 'pyqtgraph'):
                    raise ImportError('Qt is blocked: ' + name)
        sys.meta_path.insert(0, Block())
        for m in ('PyQt6', 'pyqtgraph'):
            sys.modules[m] = None
        import pkgutil, importlib
        import diffgui.engine, diffgui.app
        for pkg in (diffgui.engine, diffgui.app):
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(pkg.__name__ + '.' + info.name)
        import diffgui.cli
        assert diffgui.cli.main(['methods']) == 0
        print('OK')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")


# ---- runs in a child process ---------------------------------------------------------------------
@pytest.fixture
def shm_names(monkeypatch):
    """Names of the shared-memory blocks this test's runs create or open in this process
    (only those are checked: other programs may use /dev/shm at the same time)."""
    from multiprocessing import shared_memory

    import diffgui.app.isolated as iso

    names = []

    class Recording(shared_memory.SharedMemory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            names.append(self.name)

    monkeypatch.setattr(iso, "shared_memory", type("M", (), {"SharedMemory": Recording}))
    return names


def _shm_exists(name):
    from multiprocessing import shared_memory

    try:
        shared_memory.SharedMemory(name=name).close()
    except FileNotFoundError:
        return False
    return True


def test_isolated_run_matches_in_process(fake_method, small_pair_arrays, shm_names):
    from diffgui.app.isolated import execute_isolated

    pair = Pair(*small_pair_arrays)
    lines = []
    run = execute_isolated(Run("fake", {"scale": 0.5}), pair, verbose=lines.append)
    ref = Run("fake", {"scale": 0.5}).execute(pair)
    assert run.status == "done" and lines == ["fake: starting", "fake: done"]
    for key in ("diff", "scorr", "noise", "convolved", "kernel"):
        np.testing.assert_array_equal(run.results[key], ref.results[key])
    assert run.provenance["pair"]["shape"] == [64, 64] and run.timings["total"] > 0
    with pytest.raises(FitError, match="did not converge"):
        execute_isolated(Run("fake", {"fail": True}), pair)
    assert len(shm_names) >= 8  # inputs sent and results received
    assert not [n for n in shm_names if _shm_exists(n)]  # every shared-memory block was released


def test_isolated_cancel_kills_a_stubborn_engine_within_a_second(fake_method, small_pair_arrays):
    import threading
    import time

    from diffgui.app.isolated import execute_isolated

    pair = Pair(*small_pair_arrays)
    execute_isolated(Run("fake", {}), pair)  # fork server warm
    ev = threading.Event()
    run = Run("fake", {"stubborn": 30.0})
    threading.Timer(0.3, ev.set).start()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        execute_isolated(run, pair, cancel=ev.is_set)
    assert time.perf_counter() - t0 < 0.3 + 1.0
    assert run.status == "cancelled"


def test_unpicklable_method_is_refused_for_isolation(small_pair_arrays):
    from diffgui.app.isolated import NotIsolatable, execute_isolated

    methods.register(methods.MethodInfo("lam", "Lam", func=lambda image, template, **kw: image - template),
                     replace=True)
    try:
        with pytest.raises(NotIsolatable, match="child process"):
            execute_isolated(Run("lam", {}), Pair(*small_pair_arrays))
    finally:
        methods.unregister("lam")


def test_isolated_run_from_an_unguarded_script(tmp_path):
    """A script without ``if __name__ == '__main__'`` must not be re-run in the child."""
    (tmp_path / "fakemod.py").write_text(textwrap.dedent("""
        def sub(image, template, mask=None, template_mask=None, err=None, template_err=None,
                verbose=False, *, cancel=None):
            return image - template
    """))
    (tmp_path / "script.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r}]
        import numpy as np, fakemod
        from diffgui.app import methods
        from diffgui.app.isolated import execute_isolated
        from diffgui.app.pair import Pair
        from diffgui.app.run import Run
        print("script body ran")
        methods.register(methods.MethodInfo("sub", "Sub", func=fakemod.sub, specs=lambda: []))
        run = execute_isolated(Run("sub", {{}}), Pair(np.full((16, 16), 3.0), np.ones((16, 16))))
        print("diff", float(run.results["diff"].mean()))
    """))
    out = subprocess.run([sys.executable, str(tmp_path / "script.py")], capture_output=True, text=True, timeout=120)
    assert out.stdout.count("script body ran") == 1, out.stdout + out.stderr
    assert "diff 2.0" in out.stdout, out.stderr


def test_gains_come_from_the_fits_headers_when_unset(tmp_path):
    from astropy.io import fits

    from diffgui.app.pair import load_pair
    from diffgui.app.run import Run
    from diffgui.engine.simulation import simulate_pair

    sim = simulate_pair(shape=(128, 128), n_stars=30, transients=0, seed=3)
    fits.PrimaryHDU(sim.image, header=fits.Header({"GAIN": 2.0})).writeto(tmp_path / "s.fits")
    fits.PrimaryHDU(sim.template, header=fits.Header({"EGAIN": 10.0})).writeto(tmp_path / "t.fits")
    pair = load_pair(str(tmp_path / "s.fits"), str(tmp_path / "t.fits"))
    assert pair.header_values({"image_gain": None, "template_gain": None}) == {
        "image_gain": 2.0, "template_gain": 10.0}
    # A value the user set wins over the header.
    assert pair.header_values({"image_gain": 1.5, "template_gain": None}) == {"template_gain": 10.0}
    run = Run(method="zogy", params={})
    run.execute(pair)
    assert run.provenance["from_headers"] == {"image_gain": 2.0, "template_gain": 10.0}
    assert any("image_gain = 2 from the FITS header" in line for line in run.log)
