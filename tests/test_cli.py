"""The ``diffgui`` command: help, version, argument checks, subcommands, scripted screenshot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import diffgui
from diffgui import cli
from diffgui.app import methods

ROOT = Path(__file__).resolve().parents[1]


def _diffgui(*args, timeout=120):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "diffgui.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env=env)


def test_help_lists_window_options_and_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("--demo", "--method", "--run", "--screenshot", "SCI TMPL", "methods"):
        assert word in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"diffgui {diffgui.__version__}"


@pytest.mark.parametrize("argv, message", [
    (["one.fits"], "expected two files"),
    (["a.fits", "b.fits", "c.fits"], "expected two files"),
    (["--demo", "a.fits", "b.fits"], "either --demo or SCI TMPL"),
    (["--demo", "--method", "nope"], "unknown method 'nope'"),
    (["--demo", "--size", "big"], "--size"),
])
def test_argument_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unavailable_method_is_refused(capsys):
    missing = [m.name for m in methods.all_methods() if not m.available]
    if not missing:
        pytest.skip("every method is available")
    with pytest.raises(SystemExit):
        cli.main(["--demo", "--method", missing[0]])
    assert "cannot run here" in capsys.readouterr().err


def test_methods_subcommand(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("hotpants", "zogy", "sfft"):
        assert name in out


def test_subcommands_can_be_added(capsys, monkeypatch):
    def configure(parser):
        parser.add_argument("--n", type=int, default=1)
        parser.set_defaults(func=lambda args: print("n =", args.n) or 3)

    monkeypatch.setitem(cli.SUBCOMMANDS, "hello", (f"{__name__}:_configure_hello", "say hello"))
    monkeypatch.setattr(sys.modules[__name__], "_configure_hello", configure, raising=False)
    assert cli.main(["hello", "--n", "4"]) == 3
    assert capsys.readouterr().out.strip() == "n = 4"


def test_scripted_screenshot_of_the_demo(tmp_path):
    shot = tmp_path / "demo.png"
    avail = [m for m in ("hotpants", "sfft", "zogy") if m in methods.available()]  # fastest first
    args = ["--demo", "--screenshot", str(shot), "--size", "1200x760"]
    if avail:
        args += ["--method", avail[0], "--run"]
    out = _diffgui(*args)
    assert out.returncode == 0, out.stderr
    assert shot.exists() and shot.stat().st_size > 20000
    from PyQt6 import QtGui

    img = QtGui.QImage(str(shot))
    assert 1200 <= img.width() < 2000 and 760 <= img.height() < 1200  # at least the size asked for


def test_scripted_bad_file_exits_nonzero_without_blocking(tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_text("nope")
    out = _diffgui(str(bad), str(bad), "--screenshot", str(tmp_path / "x.png"))
    assert out.returncode == 1
    assert "not a FITS file" in out.stderr
