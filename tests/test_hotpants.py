"""HOTPANTS executable wrapper: recorded runs, command lines, process handling, failures.

No HOTPANTS executable is needed: the recorded runs in ``data/hotpants-runs`` give
real outputs to read back, and a small fake executable (a Python script written
by a fixture) plays crash, timeout, FATAL, no-stamps and streaming scenarios.
Tests that need the real executable skip without it.
"""

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from diffgui.engine import hotpants as hp
from diffgui.engine import run_hotpants
from diffgui.engine.errors import Cancelled, ExecutableError, FitError, InputError
from shared_paths import DATA

RUNS_DIR = DATA / "hotpants-runs"
RUNS = ["synthetic-512", "pydia-0102-vs-0001", "nostamps-bgsub"]
GOOD_RUNS = RUNS[:2]
FILE_OPTIONS = ("inim", "tmplim", "outim", "oni", "oci", "oki", "omi", "savexy")

pytestmark = pytest.mark.skipif(not RUNS_DIR.is_dir(), reason="recorded HOTPANTS runs not available")


def _outputs(run):
    out = RUNS_DIR / run / "output"
    return hp.read_outputs(out / "diff.fits", noise_path=out / "noise.fits",
                           convolved_path=out / "convolved.fits", kernel_path=out / "kernel.fits",
                           mask_path=out / "mask.fits", stamps_path=out / "stamps.reg")


def _inputs(run):
    d = RUNS_DIR / run / "input"
    return fits.getdata(d / "science.fits"), fits.getdata(d / "template.fits")


# ---- recorded runs ----------------------------------------------------------------------

@pytest.mark.parametrize("run", GOOD_RUNS)
def test_reader_returns_recorded_outputs(run):
    out = _outputs(run)
    rec = RUNS_DIR / run / "output"
    for arr, name in ((out.diff, "diff"), (out.noise, "noise"), (out.convolved, "convolved")):
        ref = fits.getdata(rec / f"{name}.fits")
        assert arr.dtype == np.float64 and arr.dtype.isnative
        assert np.array_equal(arr, ref.astype(np.float64))
    h = fits.getheader(rec / "diff.fits")
    assert out.header["KSUM00"] == h["KSUM00"]
    # The kernel rebuilt from the table has the recorded kernel sum and direction.
    assert out.kernel.ksum() == pytest.approx(float(h["KSUM00"]), abs=1e-4)
    assert out.kernel.direction == h["CONVOL00"].strip()
    nlines = sum(1 for ln in open(rec / "stamps.reg") if "box(" in ln)
    assert len(out.stamps) == nlines == out.header["NSTAMPS"]
    # Bad output pixels: exactly those holding the fill value, the r-wide border included.
    r = out.kernel.r
    assert out.mask[:r].all() and out.mask[:, -r:].all()
    assert np.all(out.diff[out.mask] == np.float32(1e-30))
    assert 0.5 < (~out.mask).mean() < 1


@pytest.mark.parametrize("run", GOOD_RUNS)
def test_kernel_rebuilt_from_table_reproduces_convolved_image(run):
    out = _outputs(run)
    k = out.kernel
    sci, tmpl = _inputs(run)
    src = tmpl if k.direction == "TEMPLATE" else sci
    model = k.convolve(src, normalize=True, method="hotpants")
    m = 2 * k.r  # away from the edges
    err = np.abs(model - out.convolved)[m:-m, m:-m]
    assert err.max() < 0.01, err.max()
    # The kernel evaluates anywhere; its sum is the photometric scale.
    x, y = 100.5, 200.0
    assert k(x, y).shape == (k.size, k.size)
    assert k(x, y).sum() == pytest.approx(k.ksum(), rel=1e-9)


@pytest.mark.parametrize("run", RUNS)
def test_command_line_matches_recorded_command(run):
    text = (RUNS_DIR / run / "command.txt").read_text().strip()
    exe, rec = hp.parse_command(text)
    files = {k: rec[k] for k in FILE_OPTIONS if k in rec}
    opts = {k: v for k, v in rec.items() if k not in files}
    argv = hp.build_argv({**files, **opts}, exe)
    want = shlex.split(text)
    assert len(argv) == len(want)
    for a, b in zip(argv, want):
        if a.startswith("-") and not a[1:2].isdigit():
            assert a == b
        else:
            try:
                assert float(a) == pytest.approx(float(b), rel=1e-12)
            except ValueError:
                assert a == b


def test_derived_options_reproduce_the_recorded_synthetic_command():
    """stdpipe's recipe on the recorded inputs gives the recorded thresholds, r, rss, ng."""
    _, rec = hp.parse_command((RUNS_DIR / "synthetic-512" / "command.txt").read_text())
    sci, tmpl = _inputs("synthetic-512")
    sci, tmpl = sci.astype(float), tmpl.astype(float)
    extra = {"tu": 47500, "iu": 47500, "tr": 5, "ir": 5, "n": "t", "c": "t", "ko": 2, "bgo": 1}
    o = hp.derive_options(sci, tmpl, image_fwhm=3.5, template_fwhm=2.5, image_gain=2,
                          template_gain=2, extra=extra)
    for name, value in rec.items():
        if name in FILE_OPTIONS:
            continue
        got = o[name]
        if isinstance(value, tuple):
            assert np.allclose(got, value, atol=1e-3), name
        elif isinstance(value, str):
            assert got == value, name
        else:
            assert got == pytest.approx(value, abs=0.06), name
    # Options we add beyond the recorded ones are HOTPANTS's own defaults.
    assert {k for k in o if k not in rec} <= {"nrx", "nry"}
    assert o["nrx"] == o["nry"] == 1


def test_nostamps_run_is_reported_with_the_reason():
    run = "nostamps-bgsub"
    out = _outputs(run)
    assert out.kernel is None and "KSUM00" not in out.header
    stderr = (RUNS_DIR / run / "output" / "stderr.txt").read_text()
    _, opts = hp.parse_command((RUNS_DIR / run / "command.txt").read_text())
    sci, tmpl = _inputs(run)
    with pytest.raises(ExecutableError) as exc:
        hp.check_outputs(out, stderr=stderr, image=sci, template=tmpl, options=opts)
    msg = str(exc.value)
    assert "no usable kernel stamps" in msg and "exit" in msg
    assert "lower threshold" in msg and "background-subtracted" in msg
    assert "0 and 0 stamps built" in msg


# ---- a fake executable --------------------------------------------------------------------

FAKE = r'''#!{python}
import os, shutil, signal, sys, time
args = sys.argv[1:]
mode = os.environ.get("FAKE_HOTPANTS_MODE", "ok")
src = os.environ.get("FAKE_HOTPANTS_SOURCE", "")
open("argv.txt", "w").write("\n".join(args))
open("pid.txt", "w").write(str(os.getpid()))
def value(opt):
    return args[args.index(opt) + 1] if opt in args else None
def copy_outputs():
    for opt, name in (("-outim", "diff.fits"), ("-oni", "noise.fits"), ("-oci", "convolved.fits"),
                      ("-oki", "kernel.fits"), ("-omi", "mask.fits"), ("-savexy", "stamps.reg")):
        if value(opt) and os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), value(opt))
sys.stderr.write("Doing : %s\n" % value("-inim")); sys.stderr.flush()
if mode == "crash":
    os.kill(os.getpid(), signal.SIGSEGV)
elif mode == "fatal":
    sys.stderr.write("FATAL ERROR : -rss must be >= -r\n"); sys.exit(1)
elif mode == "sleep":
    time.sleep(60)
elif mode == "stream":
    for i in range(3):
        print("line %d" % i, flush=True)
        time.sleep(0.3)
    copy_outputs()
elif mode == "nooutput":
    pass
else:
    copy_outputs()
sys.stderr.write("SUCCESS\n")
'''


@pytest.fixture
def fake_exe(tmp_path, monkeypatch):
    """Path of a fake 'hotpants'; mode and recorded source run through env variables."""
    path = tmp_path / "bin" / "hotpants"
    path.parent.mkdir()
    path.write_text(FAKE.replace("{python}", sys.executable))
    path.chmod(0o755)

    def set_mode(mode, run="synthetic-512"):
        monkeypatch.setenv("FAKE_HOTPANTS_MODE", mode)
        monkeypatch.setenv("FAKE_HOTPANTS_SOURCE", str(RUNS_DIR / run / "output"))
        return str(path)

    return set_mode


@pytest.fixture(scope="module")
def synth():
    sci, tmpl = _inputs("synthetic-512")
    return sci.astype(float), tmpl.astype(float)


def _run(synth, exe, **kw):
    sci, tmpl = synth
    kw.setdefault("image_fwhm", 3.5)
    kw.setdefault("template_fwhm", 2.5)
    kw.setdefault("image_gain", 2.0)
    return run_hotpants(sci, tmpl, _exe=exe, backend="exe", **kw)


def test_exe_run_returns_outputs_in_seed_order_and_cleans_up(synth, fake_exe, tmp_path):
    exe = fake_exe("ok")
    tmpdir = tmp_path / "tmp"
    res = _run(synth, exe, _tmpdir=str(tmpdir), get_convolved=True, get_scaled=True,
               get_noise=True, get_kernel=True, get_header=True)
    diff, conv, scaled, noise, kernel, header = res
    rec = RUNS_DIR / "synthetic-512" / "output"
    assert np.array_equal(diff, fits.getdata(rec / "diff.fits").astype(float))
    assert np.array_equal(conv, fits.getdata(rec / "convolved.fits").astype(float))
    assert np.array_equal(noise, fits.getdata(rec / "noise.fits").astype(float))
    ok = noise > 0
    assert np.allclose(scaled[ok & (diff != np.float32(1e-30))],
                       (diff / np.where(ok, noise, 1))[ok & (diff != np.float32(1e-30))])
    assert kernel.ksum() == pytest.approx(1.2911, abs=1e-4)
    assert header["CONVOL00"] == "TEMPLATE" and header["NSTAMPS"] == 11
    for a in (diff, conv, scaled, noise):
        assert a.dtype == np.float64 and a.dtype.isnative
    assert tmpdir.is_dir() and not any(tmpdir.iterdir())  # temporary folder removed
    # Only the difference when no get_* flag is set.
    only = _run(synth, exe)
    assert isinstance(only, np.ndarray) and np.array_equal(only, diff)


def test_workdir_is_kept_and_inputs_are_prepared(synth, fake_exe, tmp_path):
    exe = fake_exe("ok")
    sci, tmpl = synth
    sci = sci.copy()
    sci[100:110, 200:210] = np.nan
    mask = np.zeros(sci.shape, bool)
    mask[300:305, 300:305] = True
    wd = tmp_path / "work"
    run_hotpants(sci, tmpl, mask=mask, err=np.full(sci.shape, 20.0), image_fwhm=3.5,
                 template_fwhm=2.5, obj={"x": np.array([10.0, 20.0]), "y": np.array([30.0, 40.0])},
                 extra={"nsx": 8}, _workdir=str(wd), _exe=exe, backend="exe")
    argv = (wd / "argv.txt").read_text().split("\n")
    for opt in ("-inim", "-tmplim", "-outim", "-oni", "-oci", "-oki", "-omi", "-savexy", "-imi",
                "-ini", "-ssf", "-nsx"):
        assert opt in argv, opt
    assert "-tmi" not in argv and "-tni" not in argv  # nothing to mask or map in the template
    img = fits.getdata(wd / "image.fits")
    assert np.isfinite(img).all()  # NaNs replaced ...
    m = fits.getdata(wd / "image_mask.fits")
    assert m[105, 205] == hp.MASK_BAD_BIT and m[302, 302] == hp.MASK_BAD_BIT  # ... and masked
    assert m[0, 0] == 0 and m.sum() == hp.MASK_BAD_BIT * (100 + 25)
    xy = np.loadtxt(wd / "stamps.xy")
    assert np.allclose(xy, [[11, 31], [21, 41]])  # 1-based
    assert (wd / "diff.fits").exists() and (wd / "command.txt").exists()


def test_output_is_streamed_while_running(synth, fake_exe):
    exe = fake_exe("stream")
    seen = []
    _run(synth, exe, verbose=lambda msg: seen.append((time.monotonic(), msg)))
    lines = [(t, m) for t, m in seen if m.startswith("line ")]
    assert [m for _, m in lines] == ["line 0", "line 1", "line 2"]
    assert lines[-1][0] - lines[0][0] > 0.4  # arrived one by one, not at the end
    assert any(m == "SUCCESS" for _, m in seen)


def test_crash_is_reported(synth, fake_exe):
    with pytest.raises(ExecutableError, match="crashed.*SIGSEGV"):
        _run(synth, fake_exe("crash"))


def test_fatal_message_is_reported(synth, fake_exe):
    with pytest.raises(ExecutableError, match="FATAL ERROR : -rss must be >= -r"):
        _run(synth, fake_exe("fatal"))


def test_missing_outputs_are_reported(synth, fake_exe):
    with pytest.raises(ExecutableError, match="without writing the difference"):
        _run(synth, fake_exe("nooutput"))


def test_no_stamps_output_is_a_failure(synth, fake_exe):
    with pytest.raises(ExecutableError, match="no usable kernel stamps"):
        _run(synth, fake_exe("ok", run="nostamps-bgsub"))


def _assert_dead(pid):
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # a zombie of ours would still answer; reap it if so
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    pytest.fail(f"process {pid} still alive")


def test_timeout_kills_the_process(synth, fake_exe, tmp_path):
    exe = fake_exe("sleep")
    t0 = time.monotonic()
    with pytest.raises(ExecutableError, match="did not finish within 0.5 s"):
        hp.run(*synth, options={"r": 5, "rss": 8}, exe=exe, workdir=tmp_path / "w", timeout=0.5)
    assert time.monotonic() - t0 < 5
    _assert_dead(int((tmp_path / "w" / "pid.txt").read_text()))


def test_cancel_kills_the_process(synth, fake_exe, tmp_path):
    exe = fake_exe("sleep")
    pidfile = tmp_path / "w" / "pid.txt"
    started = []

    def cancel():  # cancel once the executable has been running for 0.2 s
        if pidfile.exists() and not started:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 0.2

    with pytest.raises(Cancelled):
        _run(synth, exe, _workdir=str(tmp_path / "w"), cancel=cancel)
    assert time.monotonic() - started[0] < 5
    _assert_dead(int(pidfile.read_text()))


def test_temporary_folder_removed_after_failure(synth, fake_exe, tmp_path):
    with pytest.raises(ExecutableError):
        _run(synth, fake_exe("crash"), _tmpdir=str(tmp_path / "t"))
    assert not any((tmp_path / "t").iterdir())


# ---- bad input ----------------------------------------------------------------------------

def test_missing_executable(synth, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ExecutableError, match="not found on PATH.*backend='native'"):
        run_hotpants(*synth, backend="exe")
    with pytest.raises(ExecutableError, match="does not exist"):
        run_hotpants(*synth, _exe=str(tmp_path / "nope"))


def test_bad_options_are_refused_before_running(synth):
    with pytest.raises(InputError, match="rss"):
        run_hotpants(*synth, extra={"r": 10, "rss": 5}, backend="native")
    with pytest.raises(InputError, match="rss"):
        run_hotpants(*synth, image_fwhm=3, extra={"r": 20}, backend="native")
    with pytest.raises(InputError, match="sft"):
        run_hotpants(*synth, extra={"sft": 2.0}, backend="native")
    with pytest.raises(InputError, match="unknown HOTPANTS option"):
        run_hotpants(*synth, extra={"rsss": 5}, backend="native")
    with pytest.raises(InputError, match="backend"):
        run_hotpants(*synth, backend="gpu")


def test_nan_only_and_mismatched_images(synth):
    sci, tmpl = synth
    with pytest.raises(InputError, match="no finite pixels"):
        run_hotpants(np.full_like(sci, np.nan), tmpl, backend="native")
    with pytest.raises(InputError, match="same shape"):
        run_hotpants(sci[:-1], tmpl, backend="native")


def test_no_stars_is_a_clear_error():
    rng = np.random.default_rng(5)
    sky = 1000 + rng.normal(0, 20, (200, 200))
    tmpl = 300 + rng.normal(0, 10, (200, 200))
    with pytest.raises(FitError, match="no usable kernel stamps.*no star"):
        run_hotpants(sky, tmpl, image_gain=2.5, template_gain=1, backend="native",
                     extra={"r": 5, "rss": 8})


def test_parse_command_round_trip():
    exe, o = hp.parse_command("hotpants -inim a.fits -ng 2 4 0.7 2 1.5 -allm -rkw REG 2 -tu 3.5e4")
    assert exe == "hotpants"
    assert o == {"inim": "a.fits", "ng": (2, 4, 0.7, 2, 1.5), "allm": True, "rkw": ("REG", 2),
                 "tu": 35000.0}
    assert hp.parse_command(hp.build_argv(o))[1] == o
    with pytest.raises(InputError, match="unknown"):
        hp.parse_command("hotpants -zz 1")


def test_residual_gradient_flags_a_sky_gradient():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    noise = np.full((256, 256), 10.0)
    flat = rng.normal(0, 10, (256, 256))
    assert hp.residual_gradient(flat, noise, None) < 0.1
    assert hp.residual_gradient(flat + 0.1 * xx, noise, None) > 2


# ---- with the real executable --------------------------------------------------------------

@pytest.mark.skipif(shutil.which("hotpants") is None, reason="no hotpants executable on PATH")
def test_backends_agree_with_the_real_executable(synth):
    sci, tmpl = synth
    kw = dict(image_fwhm=3.5, template_fwhm=2.5, image_gain=2.0, template_gain=2.0,
              extra={"ir": 5, "tr": 5, "ko": 1, "bgo": 1}, get_noise=True, get_kernel=True)
    d1, n1, k1 = run_hotpants(sci, tmpl, backend="exe", **kw)
    d2, n2, k2 = run_hotpants(sci, tmpl, backend="native", **kw)
    assert k1.direction == k2.direction
    assert k2.ksum() == pytest.approx(k1.ksum(), rel=0.01)
    ok = (n1 > 0) & (n2 > 0)
    z1, z2 = d1[ok] / n1[ok], d2[ok] / n2[ok]
    mad = lambda z: 1.4826 * np.median(np.abs(z - np.median(z)))  # noqa: E731
    assert mad(z2) == pytest.approx(mad(z1), abs=0.05)
    assert np.median(n2[ok] / n1[ok]) == pytest.approx(1.0, abs=0.05)


def test_substamp_file_for_the_native_backend(tmp_path):
    from diffgui.engine.simulation import simulate_pair

    pair = simulate_pair(shape=(256, 256), n_stars=60, star_flux_range=(3e3, 3e4), transients=0,
                         template_gain=100.0, seed=2)
    stars = pair.stars[:15]
    path = tmp_path / "centres.txt"
    path.write_text("x y\n" + "".join(f"{x + 1:.2f} {y + 1:.2f}\n"
                                      for x, y in zip(stars["x"], stars["y"])))
    assert np.allclose(hp.read_xy_file(path), np.stack([stars["x"], stars["y"]], 1), atol=0.01)
    diff, hdr = run_hotpants(pair.image, pair.template, image_gain=2.0, template_gain=100.0,
                             extra={"ssf": str(path), "afssc": 0, "r": 8, "rss": 11, "nsx": 4,
                                    "nsy": 4}, get_header=True, backend="native")
    assert 3 <= hdr["NSTAMPS"] <= 15
