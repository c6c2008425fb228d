"""Child processes when diffgui is frozen: the executable is the application itself, so the
command lines multiprocessing gives its helpers must be understood by ``diffgui.cli.main``
(issue 16). Simulated: ``sys.frozen`` set and the executable a script that runs only
``diffgui.cli.main`` (it cannot interpret ``-B -S -I -c``, as a PyInstaller build cannot)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffgui.app.frozen import is_child_command

REPO = Path(__file__).resolve().parents[1]


def test_child_command_lines_are_recognised_and_nothing_else():
    code = "from multiprocessing.forkserver import main; main(5, 6, ['x'], **{'sys_path': []})"
    assert is_child_command(["diffgui", "-B", "-S", "-I", "-c", code]) == "exec"
    assert is_child_command(["diffgui", "-c", "from multiprocessing.resource_tracker import main;main(7)"]) == "exec"
    assert is_child_command(["diffgui", "-W", "ignore", "-X", "dev", "-c", code]) == "exec"
    assert is_child_command(["diffgui", "--multiprocessing-fork", "tracker_fd=5", "pipe_handle=7"]) == "spawn"
    assert is_child_command(["diffgui", "-c", "import os; os.system('x')"]) == ""
    assert is_child_command(["diffgui", "a.fits", "-c", code]) == ""
    assert is_child_command(["diffgui", "--demo", "--run"]) == ""
    assert is_child_command(["diffgui", "run", "--method", "zogy"]) == ""


def _fake_frozen_executable(tmp_path):
    exe = tmp_path / "diffgui-frozen"
    exe.write_text(f"#!{sys.executable}\n"
                   "import sys\n"
                   f"sys.path.insert(0, {str(REPO)!r})\n"
                   "from diffgui.cli import main\n"
                   "sys.exit(main())\n")
    exe.chmod(0o755)
    return exe


PARENT = textwrap.dedent("""
    import multiprocessing as mp, sys
    import numpy as np
    exe, start = sys.argv[1], sys.argv[2]
    sys.frozen = True                     # what PyInstaller sets
    sys.executable = exe                  # ... and the executable is the application
    mp.set_executable(exe)
    from diffgui.app import isolated
    isolated._CTX = mp.get_context(start)
    if start == "forkserver":  # the command lines are the same; a lighter preload keeps the test short
        isolated._CTX.set_forkserver_preload(["diffgui.app.isolated"])
    from diffgui.engine.common.fft import fft_convolve
    img = np.zeros((32, 32)); img[16, 16] = 1.0
    ker = np.ones((3, 3)) / 9
    got = isolated.call_isolated(fft_convolve, {"image": img, "kernel": ker})
    ref = fft_convolve(img, ker)
    assert np.array_equal(got, ref), "different result"
    print("OK", start)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="script executables")
@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_children_work_when_the_executable_is_the_application(tmp_path, start):
    exe = _fake_frozen_executable(tmp_path)
    out = subprocess.run([sys.executable, "-c", PARENT, str(exe), start], capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith(f"OK {start}")
    assert "unrecognized arguments" not in out.stderr
