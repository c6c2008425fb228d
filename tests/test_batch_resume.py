"""Batches: resume with completeness checks, progress bar, summary ECSV, pair lists with odd
names, early checks (workers, output folder, scheduler) and SIGTERM without orphans."""

import io
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from vetting_support import standin_sfft, write_pair

from diffgui.app import batch, batch_report
from diffgui.app.presets import make_preset
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sims():
    return [simulate_pair(shape=(96, 96), transients=2, transient_snr_range=(30, 60), seed=s) for s in (1, 2, 3)]


@pytest.fixture
def pairs(tmp_path, sims):
    return [tuple(write_pair(tmp_path, sim, names=(f"sci{i}.fits", f"tmpl{i}.fits"))) for i, sim in enumerate(sims)]


def test_resume_skips_complete_outputs_and_redoes_truncated_ones(tmp_path, pairs):
    with standin_sfft():
        params = make_preset("sfft", {}).params
        jobs = batch.plan_jobs(pairs, tmp_path / "out")
        first = batch.run_batch(jobs[:2], "sfft", params, backend="serial")
        assert [r.status for r in first] == ["done", "done"]
        assert batch_report.output_complete(jobs[0].output)
        before = fits.getdata(jobs[0].output, "DIFF")
        # truncate the second output: not complete any more
        size = os.path.getsize(jobs[1].output)
        with open(jobs[1].output, "r+b") as fh:
            fh.truncate(size - 5000)
        assert not batch_report.output_complete(jobs[1].output)
        # without --resume existing outputs are refused, not overwritten
        again = batch.run_batch(jobs, "sfft", params, backend="serial")
        assert [r.status for r in again] == ["failed", "failed", "done"] and "--resume" in again[0].error
        res = batch.run_batch(jobs, "sfft", params, backend="serial", resume=True)
    assert [r.status for r in res] == ["skipped", "done", "skipped"]
    np.testing.assert_array_equal(fits.getdata(jobs[0].output, "DIFF"), before)
    assert batch_report.output_complete(jobs[1].output)


def test_progress_bar_and_summary_table(tmp_path, pairs):
    stream = io.StringIO()
    bar = batch_report.ProgressBar(3, stream=stream)
    jobs = batch.plan_jobs(pairs, tmp_path / "out")
    results = [batch.BatchResult(jobs[0], "done", seconds=2.0), batch.BatchResult(jobs[1], "failed", "boom", 1.0),
               batch.BatchResult(jobs[2], "cancelled", "cancelled")]
    for r in results[:2]:
        bar.update(r)
    text = stream.getvalue()
    assert "[2/3] sci1.fits: failed in 1.0 s: boom  (done 1, failed 1, left" in text
    tty = batch_report.ProgressBar(3, stream=stream)
    tty.tty = True
    tty.update(results[0])
    assert "] 1/3 done 1 failed 0 left" in stream.getvalue()
    path = batch_report.write_summary(results, tmp_path)
    t = Table.read(path, format="ascii.ecsv")
    assert list(t["status"]) == ["done", "failed", "cancelled"] and t["error"][1] == "boom"
    assert "1 done, 1 failed, 1 cancelled" in batch_report.format_summary(results)
    assert batch_report.write_summary(results, tmp_path) != path  # never overwritten


def test_pair_lists_with_spaces_and_hashes(tmp_path):
    lst = tmp_path / "pairs.txt"
    lst.write_text('\ufeff# science template\n"night 1/sci #1.fits" tmpl.fits  # comment\n'
                   "night 2/sci #2.fits\tt b.fits\tout #2.fits\n'a b.fits', c.fits\n", encoding="utf-8")
    pairs = batch.read_pair_list(lst)
    assert pairs == [(str(tmp_path / "night 1/sci #1.fits"), str(tmp_path / "tmpl.fits")),
                     (str(tmp_path / "night 2/sci #2.fits"), str(tmp_path / "t b.fits"), str(tmp_path / "out #2.fits")),
                     (str(tmp_path / "a b.fits"), str(tmp_path / "c.fits"))]
    lst.write_text('"unclosed.fits tmpl.fits\n')
    with pytest.raises(InputError, match="line 1"):
        batch.read_pair_list(lst)


def test_early_checks(tmp_path):
    with pytest.raises(InputError, match="workers"):
        batch.run_batch([], "sfft", {}, workers=-1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        batch_report.check_output_dir(blocker, 1)
    with pytest.raises(InputError, match="MB free"):
        batch_report.check_output_dir(tmp_path / "new", 10, 2 ** 60)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(InputError, match="not writable"):
            batch_report.check_output_dir(ro, 1)
        ro.chmod(0o700)
    from diffgui.app.batch_dask import check_scheduler

    t0 = time.monotonic()
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        check_scheduler("tcp://127.0.0.1:9")  # discard port: nothing listens
    assert time.monotonic() - t0 < 5
    with pytest.raises(InputError, match="tcp://HOST:PORT"):
        check_scheduler("nonsense")


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.Popen([sys.executable, "-m", "diffgui", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, **kw)


def test_cli_refuses_bad_workers_and_unreachable_scheduler_quickly(tmp_path, pairs):
    p = _cli("batch", "--method", "hotpants", "--template", pairs[0][1], pairs[0][0], "-o", str(tmp_path / "o"),
             "--workers", "-1")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--workers" in err
    t0 = time.monotonic()
    p = _cli("batch", "--method", "hotpants", "--template", pairs[0][1], pairs[0][0], "-o", str(tmp_path / "o"),
             "--scheduler", "tcp://127.0.0.1:9")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "cannot reach the Dask scheduler" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 20


def _outputs(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith("-diff.fits")) if os.path.isdir(folder) else []


def _children(pid):
    psutil = pytest.importorskip("psutil")
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_sigterm_stops_workers_prints_summary_and_resume_finishes_the_rest(tmp_path):
    psutil = pytest.importorskip("psutil")
    sims = [simulate_pair(shape=(128, 128), transients=1, seed=10 + i) for i in range(6)]
    pairs = [write_pair(tmp_path, s, names=(f"s{i}.fits", f"t{i}.fits")) for i, s in enumerate(sims)]
    lst = tmp_path / "pairs.txt"
    lst.write_text("".join(f'"{a}" "{b}"\n' for a, b in pairs))
    out = tmp_path / "out"
    args = ("batch", "--method", "hotpants", "--set", "backend=native", "--pairs", str(lst), "-o", str(out),
            "--workers", "2", "-q")
    p = _cli(*args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _outputs(out) and p.poll() is None:
        time.sleep(0.2)
    kids = _children(p.pid)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "Traceback" not in err and "cancelled" in err and "summary written" in err
    time.sleep(0.5)
    alive = [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"orphaned workers {alive}"
    done = sorted(f for f in os.listdir(out) if f.endswith("-diff.fits"))
    assert 1 <= len(done) < 6
    p = _cli(*args[:-3], "--workers", "1", "-q", "--resume")
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    assert f"{len(done)} skipped" in err and f"{6 - len(done)} done" in err
    assert len([f for f in os.listdir(out) if f.endswith("-diff.fits")]) == 6


def test_batch_align_registers_and_records_the_transform(tmp_path, capsys):
    from test_registration import star_field

    from diffgui.app.results_io import load_run
    from diffgui.cli import main
    from diffgui.engine.common.registration import Transform

    tmpl = tmp_path / "t.fits"
    fits.PrimaryHDU(star_field(shape=(128, 128), n=90).astype(np.float32), header=fits.Header({"GAIN": 2.0})).writeto(tmpl)
    sci = tmp_path / "s #1.fits"
    fits.PrimaryHDU(star_field(Transform.shift(2.6, -1.3), shape=(128, 128), n=90, seed=3).astype(np.float32),
                    header=fits.Header({"GAIN": 2.0, "MJD-OBS": 60000.5})).writeto(sci)
    rc = main(["batch", "--method", "hotpants", "--set", "backend=native", "--template", str(tmpl), str(sci),
               "-o", str(tmp_path / "out"), "--backend", "serial", "--align"])
    assert rc == 0, capsys.readouterr().err
    run = load_run(tmp_path / "out" / "s #1-diff.fits")
    reg = run.provenance["registration"]
    assert reg["offset"] == pytest.approx([2.6, -1.3], abs=0.05) and reg["interpolant"] == "lanczos3"
    assert run.provenance["observation"]["time"] == pytest.approx(60000.5)


def test_ctrl_c_while_workers_start_is_held_back_then_delivered():
    # a terminal's Ctrl-C reaches the whole process group: workers still importing Python
    # printed tracebacks; while they start the signal is held and then raised here once
    from diffgui.app.batch import sigint_held

    seen = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_held():
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # as to the process, minus other threads
            seen.append("still running")
        time.sleep(0.5)  # delivered as soon as the block ends
    assert seen == ["still running"]


def test_pool_workers_get_a_share_of_the_cores(monkeypatch):
    from diffgui.engine.common import fft

    for var in ("DIFFGUI_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "")
    from diffgui.engine.common.blas import single_thread_blas

    saved = [(put, get()) for get, put in single_thread_blas._find()]
    try:
        batch._limit_threads(1)
        assert fft.resolve_threads(0) == 1 and fft.resolve_threads(3) == 3
        assert all(get() == 1 for get, _ in single_thread_blas._find())
    finally:
        for put, n in saved:
            put(n)
