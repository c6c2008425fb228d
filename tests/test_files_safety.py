"""Files diffgui writes: permissions (umask), stale temporaries, non-ASCII names, outputs
checked before the run, and signals to ``diffgui run`` (issue 12, items 2, 3, 6, 9)."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from vetting_support import write_pair

from diffgui import cli
from diffgui.app.atomic import atomic_write, check_output, host_tag, write_text_atomic
from diffgui.app.results_io import card_text, card_text_decode, header_text, load_run
from diffgui.engine.common.process import clean_stale_dirs, make_temp_dir
from diffgui.engine.errors import InputError
from diffgui.engine.simulation import simulate_pair

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim():
    return simulate_pair(shape=(128, 128), transients=2, transient_snr_range=(30, 60), seed=3)


@pytest.fixture
def umask():
    """Set a umask for the test; the old one comes back afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_get_the_umask_permissions(tmp_path, umask, mask):
    umask(mask)
    text = write_text_atomic(tmp_path / "a.txt", "x\n", overwrite=False)
    image = atomic_write(tmp_path / "b.fits", lambda tmp: fits.PrimaryHDU(np.zeros((4, 4))).writeto(tmp,
                                                                                                    overwrite=True))
    assert _mode(text) == _mode(image) == 0o666 & ~mask


def test_overwrite_keeps_the_existing_permissions(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "shared.csv"
    path.write_text("old\n")
    os.chmod(path, 0o644)
    write_text_atomic(path, "new\n", overwrite=True)
    assert path.read_text() == "new\n" and _mode(path) == 0o644
    with pytest.raises(FileExistsError):
        write_text_atomic(path, "again\n", overwrite=False)


def test_stale_temporaries_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale = tmp_path / f".tmp-diffgui-{host_tag()}-{dead}-0123456789ab.fits"
    alive = tmp_path / f".tmp-diffgui-{host_tag()}-{live}-0123456789ab.fits"
    other_host = tmp_path / f".tmp-diffgui-00000000-{dead}-0123456789ab.fits"
    foreign = tmp_path / ".tmp-notours.fits"
    old_style, old_fresh = tmp_path / ".tmp-ab12cd34.fits", tmp_path / ".tmp-zz12cd34.ecsv"
    for p in (stale, alive, other_host, foreign, old_style, old_fresh):
        p.write_text("partial")
    os.utime(old_style, (time.time() - 2 * 86400,) * 2)  # mkstemp naming of earlier versions: after a day
    write_text_atomic(tmp_path / "labels.csv", "key,label\n")
    assert not stale.exists() and not old_style.exists()
    assert alive.exists() and other_host.exists() and foreign.exists() and old_fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-diffgui")) == \
        sorted([alive.name, other_host.name])


def test_failed_write_leaves_no_temporary(tmp_path):
    def boom(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.fits", boom)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_folders_of_dead_processes_are_removed(tmp_path):
    mine = make_temp_dir("diffgui_hotpants_", dir=tmp_path)
    dead = tmp_path / f"diffgui_hotpants_{host_tag()}-{_dead_pid()}-abc"
    dead.mkdir()
    (dead / "image.fits").write_text("x")
    unrelated = tmp_path / "diffgui_hotpants_oldstyle"
    unrelated.mkdir()
    assert clean_stale_dirs("diffgui_hotpants_", dir=tmp_path) == [str(dead)]
    assert os.path.isdir(mine) and unrelated.is_dir() and not dead.exists()


def test_card_text_round_trip():
    for name in ("café.fits", "100%.fits", "a b#[1].fits", "日本.fits", "plain.fits"):
        enc = card_text(name)
        assert enc.isascii() and all(0x20 <= ord(c) < 0x7F for c in enc)
        assert card_text_decode(enc) == name
    assert card_text("café.fits") == "caf%C3%A9.fits"


def test_non_ascii_names_round_trip_through_run_and_loader(tmp_path, sim, umask, capsys):
    umask(0o002)
    sci, tmpl = write_pair(tmp_path, sim, names=("café.fits", "modèle ü.fits"))
    out, cand = tmp_path / "résultat.fits", tmp_path / "candidats é.csv"
    rc = cli.main(["run", "--method", "zogy", sci, tmpl, "-o", str(out), "--candidates", str(cand), "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    hdr = fits.getheader(out)
    assert hdr["DGSCI"] == "caf%C3%A9.fits"
    assert header_text(hdr, "DGSCI") == "café.fits" and header_text(hdr, "DGTMPL") == "modèle ü.fits"
    run = load_run(out)
    assert os.path.basename(run.provenance["pair"]["image_path"]) == "café.fits"
    assert os.path.basename(run.provenance["pair"]["template_path"]) == "modèle ü.fits"
    assert run.results["diff"].shape == sim.image.shape
    assert _mode(out) == _mode(cand) == 0o664


def test_output_equal_to_an_input_is_refused_even_with_overwrite(tmp_path, sim, capsys):
    sci, tmpl = write_pair(tmp_path, sim)
    before = Path(sci).read_bytes()
    for target, science in ((sci, sci), (str(tmp_path / "." / "sci.fits"), sci), (sci, sci + "[0]")):
        rc = cli.main(["run", "--method", "zogy", science, tmpl, "-o", target, "--overwrite"])
        assert rc == 2 and "same file as" in capsys.readouterr().err
    link = tmp_path / "link.fits"
    link.symlink_to(tmpl)
    rc = cli.main(["run", "--method", "zogy", sci, tmpl, "-o", str(link), "--overwrite"])
    assert rc == 2 and "same file as" in capsys.readouterr().err
    rc = cli.main(["run", "--method", "zogy", sci, tmpl, "-o", str(tmp_path / "o.fits"),
                   "--candidates", str(tmp_path / "o.fits")])
    assert rc == 2 and "same file as" in capsys.readouterr().err
    assert Path(sci).read_bytes() == before


def test_bad_outputs_and_threshold_are_refused_before_the_run(tmp_path, sim, capsys):
    sci, tmpl = write_pair(tmp_path, sim)
    cases = [(["-o", str(tmp_path / "missing" / "o.fits")], "does not exist"),
             (["-o", str(tmp_path)], "is a folder"),
             (["-o", str(tmp_path / "o.fits"), "--threshold", "-1"], "--threshold"),
             (["-o", str(tmp_path / "o.fits"), "--threshold", "nan"], "--threshold")]
    for extra, words in cases:
        t0 = time.perf_counter()
        rc = cli.main(["run", "--method", "zogy", sci, tmpl, *extra])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and "running" not in err
        assert time.perf_counter() - t0 < 1.0
    assert not (tmp_path / "o.fits").exists()
    with pytest.raises(InputError, match="MB free"):
        check_output(tmp_path / "o.fits", need_bytes=2**62)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_output(ro / "o.fits")
    finally:
        ro.chmod(0o755)


def test_preset_with_a_byte_order_mark_is_read(tmp_path, capsys):
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf[diffgui]\nschema = 1\n[preset]\nmethod = 'zogy'\n[params]\nnx = 2\n")
    rc = cli.main(["run", "--preset", str(p), "--save-preset", str(tmp_path / "copy.toml")])
    assert rc == 0, capsys.readouterr().err


# ---- signals ---------------------------------------------------------------------------------

FAKE_HOTPANTS = """#!/bin/sh
echo "fake hotpants $$" 
echo $$ > "$FAKE_PIDFILE"
exec sleep 60
"""


def _process_gone(pid, timeout=5.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        except OSError:
            if not os.path.exists(f"/proc/{pid}"):
                return True
        time.sleep(0.05)
    return False


def _start_run_with_fake_hotpants(tmp_path, sim):
    sci, tmpl = write_pair(tmp_path, sim)
    bindir, tmpdir = tmp_path / "bin", tmp_path / "tmp"
    bindir.mkdir()
    tmpdir.mkdir()
    exe = bindir / "hotpants"
    exe.write_text(FAKE_HOTPANTS)
    exe.chmod(0o755)
    pidfile = tmp_path / "hotpants.pid"
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", TMPDIR=str(tmpdir),
               FAKE_PIDFILE=str(pidfile), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "diffgui", "run", "--method", "hotpants", "--set", "backend=exe",
                             sci, tmpl, "-o", str(tmp_path / "out.fits")],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_end = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > t_end:
            proc.kill()
            pytest.fail(f"the fake HOTPANTS never started: {proc.communicate()[1]}")
        time.sleep(0.05)
    return proc, int(pidfile.read_text()), tmpdir


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks use /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_run_kills_hotpants_and_removes_its_folder(tmp_path, sim, sig):
    proc, hp_pid, tmpdir = _start_run_with_fake_hotpants(tmp_path, sim)
    assert any(p.name.startswith("diffgui_hotpants_") for p in tmpdir.iterdir())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "stopped by" in err.strip().splitlines()[-1]
    assert _process_gone(hp_pid)
    assert list(tmpdir.iterdir()) == []
    assert not (tmp_path / "out.fits").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_kill_9_of_run_takes_hotpants_along_and_the_next_run_cleans_the_folder(tmp_path, sim):
    proc, hp_pid, tmpdir = _start_run_with_fake_hotpants(tmp_path, sim)
    proc.kill()
    proc.communicate(timeout=20)
    assert _process_gone(hp_pid)
    left = [p for p in tmpdir.iterdir() if p.name.startswith("diffgui_hotpants_")]
    assert len(left) == 1  # a kill -9 runs no clean-up; the next run's does
    from diffgui.engine.hotpants.run import _work_folder

    new, remove = _work_folder(None, tmpdir)  # what the next HOTPANTS run does first
    assert remove and not left[0].exists() and [p.name for p in tmpdir.iterdir()] == [os.path.basename(new)]


def test_sigterm_becomes_an_exception_only_inside_the_block():
    from diffgui.app.signals import Terminated, exit_code, stop_message, stop_signals_raise

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info:
        with stop_signals_raise():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)  # the handler runs at the next bytecode
    assert exit_code(info.value) == 143 and "SIGTERM" in stop_message(info.value)
    assert exit_code(KeyboardInterrupt()) == 130 and "Ctrl-C" in stop_message(KeyboardInterrupt())
    assert signal.getsignal(signal.SIGTERM) == before
