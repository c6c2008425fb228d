"""Desktop integration for the current user: ``diffgui --install-desktop``.

Installs, under ``$XDG_DATA_HOME`` (default ``~/.local/share``):

* ``applications/diffgui.desktop``: the menu entry, with ``Exec`` pointing at the
  command that runs this diffgui (the frozen executable, the installed
  ``diffgui`` script, or ``python -m diffgui``);
* ``icons/hicolor/scalable/apps/diffgui.svg`` and ``icons/hicolor/256x256/apps/diffgui.png``;
* ``mime/packages/diffgui-fits.xml``: a MIME type for FITS files (``image/fits``)
  so that a file manager offers diffgui for a selected science/template pair.

The desktop and MIME caches are refreshed when ``update-desktop-database`` and
``update-mime-database`` exist (they are optional). No Qt needed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from diffgui.engine.errors import InputError

from .atomic import write_text_atomic

__all__ = ["resource_path", "launch_command", "desktop_entry", "install_desktop", "uninstall_desktop"]

_FILES = {  # resource -> path below the data folder
    "diffgui.svg": "icons/hicolor/scalable/apps/diffgui.svg",
    "diffgui.png": "icons/hicolor/256x256/apps/diffgui.png",
    "diffgui-fits.xml": "mime/packages/diffgui-fits.xml",
}
_ENTRY = "applications/diffgui.desktop"


def resource_path(name: str) -> Path:
    """Path of a file shipped in ``diffgui/resources`` (also inside a frozen build)."""
    here = Path(__file__).resolve().parents[1] / "resources" / name
    if here.exists():
        return here
    base = getattr(sys, "_MEIPASS", None)  # PyInstaller: data files beside the executable
    if base and (Path(base) / "diffgui" / "resources" / name).exists():
        return Path(base) / "diffgui" / "resources" / name
    raise InputError(f"resource {name!r} is missing from this installation of diffgui.")


def launch_command() -> list:
    """The command line that starts this diffgui (without arguments)."""
    if getattr(sys, "frozen", False):
        return [os.path.abspath(sys.executable)]
    beside = os.path.join(os.path.dirname(sys.executable), "diffgui")  # this environment's script
    script = beside if os.access(beside, os.X_OK) else shutil.which("diffgui")
    if script:
        return [os.path.abspath(script)]
    return [os.path.abspath(sys.executable), "-m", "diffgui"]


def _exec_quote(arg: str) -> str:
    """Quote one argument of a desktop entry's ``Exec`` key (freedesktop rules)."""
    if arg and not any(c in arg for c in ' \t\n"\'\\><~|&;$*?#()`='):
        return arg.replace("%", "%%")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return '"' + escaped.replace("%", "%%") + '"'


def desktop_entry(command=None) -> str:
    """Text of the ``.desktop`` file, with ``Exec`` set to ``command`` (default: :func:`launch_command`)."""
    command = launch_command() if command is None else list(command)
    exec_line = " ".join(_exec_quote(a) for a in command) + " %F"
    lines = []
    for line in resource_path("diffgui.desktop").read_text(encoding="utf-8").splitlines():
        if line.startswith("Exec="):
            line = "Exec=" + exec_line.replace("\\", "\\\\")  # the key's value is itself escaped
        lines.append(line)
    return "\n".join(lines) + "\n"


def _data_home(data_home=None) -> Path:
    if data_home:
        return Path(data_home)
    env = os.environ.get("XDG_DATA_HOME")
    return Path(env) if env and os.path.isabs(env) else Path.home() / ".local" / "share"


def _refresh_caches(base: Path, log) -> None:
    for tool, folder in (("update-desktop-database", base / "applications"), ("update-mime-database", base / "mime")):
        exe = shutil.which(tool)
        if exe is None:
            continue
        try:
            subprocess.run([exe, str(folder)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, check=False)
            log(f"refreshed with {tool}")
        except (OSError, subprocess.SubprocessError):
            pass


def install_desktop(data_home=None, *, command=None, log=print) -> list:
    """Install the menu entry, icons and FITS MIME type for the current user.

    Parameters
    ----------
    data_home : str or Path, optional
        Data folder (default ``$XDG_DATA_HOME`` or ``~/.local/share``).
    command : list of str, optional
        Command to put in ``Exec`` (default: :func:`launch_command`).
    log : callable
        Receives one line per file written.

    Returns
    -------
    list of str
        The files written (existing ones are replaced: installing again updates them).
    """
    base = _data_home(data_home)
    written = []
    targets = [(base / _ENTRY, desktop_entry(command))]
    targets += [(base / rel, resource_path(name)) for name, rel in _FILES.items()]
    for target, content in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            data = content.read_bytes()

            def write(tmp, data=data):
                Path(tmp).write_bytes(data)

            from .atomic import atomic_write

            atomic_write(target, write, overwrite=True)
        else:
            write_text_atomic(target, content, overwrite=True)
        written.append(str(target))
        log(f"installed {target}")
    _refresh_caches(base, log)
    return written


def uninstall_desktop(data_home=None, *, log=print) -> list:
    """Remove what :func:`install_desktop` installed; returns the files removed."""
    base = _data_home(data_home)
    removed = []
    for rel in [_ENTRY, *_FILES.values()]:
        path = base / rel
        if path.exists():
            path.unlink()
            removed.append(str(path))
            log(f"removed {path}")
    _refresh_caches(base, log)
    return removed


def shell_command(command=None) -> str:
    """The launch command as a shell would type it (for messages)."""
    return shlex.join(launch_command() if command is None else command)
