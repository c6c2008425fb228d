"""``diffgui --install-desktop``: menu entry, icons and FITS MIME type in the XDG folders (issue 16)."""

import configparser
import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from diffgui import cli
from diffgui.app import desktop

REPO = Path(__file__).resolve().parents[1]


def _entry(path):
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(path, encoding="utf-8")
    return cp["Desktop Entry"]


def test_install_desktop_writes_entry_icons_and_mime_type(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert cli.main(["--install-desktop"]) == 0
    entry = _entry(tmp_path / "applications" / "diffgui.desktop")
    argv = shlex.split(entry["Exec"])
    assert argv[-1] == "%F" and argv[:-1] == desktop.launch_command()
    assert os.path.exists(argv[0]) and os.access(argv[0], os.X_OK)
    assert entry["Icon"] == "diffgui" and entry["Type"] == "Application" and "image/fits" in entry["MimeType"]
    svg = tmp_path / "icons" / "hicolor" / "scalable" / "apps" / "diffgui.svg"
    png = tmp_path / "icons" / "hicolor" / "256x256" / "apps" / "diffgui.png"
    assert svg.read_text().lstrip().startswith("<svg") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mime = ET.parse(tmp_path / "mime" / "packages" / "diffgui-fits.xml").getroot()
    types = mime.findall("{http://www.freedesktop.org/standards/shared-mime-info}mime-type")
    assert [t.get("type") for t in types] == ["image/fits"]
    assert "installed" in capsys.readouterr().out
    assert cli.main(["--uninstall-desktop"]) == 0
    assert not (tmp_path / "applications" / "diffgui.desktop").exists() and not png.exists()


def test_exec_line_quotes_paths_with_spaces_and_percent(tmp_path):
    text = desktop.desktop_entry(["/opt/my apps/diffgui 100%", "-m", "diffgui"])
    line = next(x for x in text.splitlines() if x.startswith("Exec="))
    assert line == 'Exec="/opt/my apps/diffgui 100%%" -m diffgui %F'


def test_frozen_executable_is_the_exec_command(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/diffgui/diffgui")
    assert desktop.launch_command() == ["/opt/diffgui/diffgui"]


def test_resources_are_package_data():
    for name in ("diffgui.desktop", "diffgui.svg", "diffgui.png", "diffgui-fits.xml"):
        path = desktop.resource_path(name)
        assert path.parent == REPO / "diffgui" / "resources" and path.stat().st_size > 100
    text = (REPO / "pyproject.toml").read_text()
    assert 'diffgui = ["resources/*"]' in text


def test_install_desktop_works_without_qt(tmp_path):
    code = ("import sys; from diffgui.cli import main; rc = main(['--install-desktop']); "
            "assert 'PyQt6' not in sys.modules; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(REPO),
                         env=dict(os.environ, XDG_DATA_HOME=str(tmp_path), PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "applications" / "diffgui.desktop").exists()
