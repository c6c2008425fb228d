"""Import rules of the package layout (docs/architecture.md), checked on the source.

Every module's imports are parsed with :mod:`ast` (also lazy imports inside functions):

- ``diffgui.engine`` imports no Qt (PyQt6, PySide6, qtpy, pyqtgraph) and nothing from
  ``diffgui.app`` or ``diffgui.gui``;
- the method packages (zogy, sfft, alard_lupton, hotpants) do not import each other,
  except that hotpants may use alard_lupton's kernel model (``SpatialKernel``);
- ``diffgui.engine.common`` imports no method package, nor psf, params or simulation;
- ``diffgui.app`` imports no Qt and nothing from ``diffgui.gui`` (layers point down:
  gui -> app -> engine);
- the headless subcommands ``diffgui.cli_*`` import no Qt and nothing from ``diffgui.gui``
  (``diffgui.cli`` imports the GUI only to open the window).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffgui"

QT = ("PyQt6", "PyQt5", "PySide6", "PySide2", "qtpy", "pyqtgraph")
METHODS = ("zogy", "sfft", "alard_lupton", "hotpants")
#: (importing method, imported method) -> names it may import.
ALLOWED_CROSS = {("hotpants", "alard_lupton"): {"SpatialKernel"}}


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(module: str, source: str, is_package: bool = False):
    """``(imported module, imported names, line)`` for every import in ``source``.

    ``from X import a, b`` yields X and also ``X.a``, ``X.b`` (they may be
    submodules); relative imports are resolved against ``module``.
    """
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, set(), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            names = {a.name for a in node.names}
            out.append((base, names, node.lineno))
            for n in names:
                out.append((f"{base}.{n}", set(), node.lineno))
    return out


def _method_of(name: str):
    parts = name.split(".")
    if len(parts) >= 3 and parts[:2] == ["diffgui", "engine"] and parts[2] in METHODS:
        return parts[2]
    return None


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _headless(module: str) -> bool:
    return module.startswith("diffgui.cli_")


def violations(module: str, source: str, is_package: bool = False) -> list:
    """Import-rule violations of one module (empty list: none)."""
    found = []
    for target, names, line in imports(module, source, is_package):
        where = f"{module}:{line} imports {target}"
        top = target.split(".")[0]
        if _within(module, "diffgui.engine") or _within(module, "diffgui.app") or _headless(module):
            if top in QT:
                found.append(f"{where} (Qt outside the GUI)")
        if _within(module, "diffgui.engine"):
            if _within(target, "diffgui.app") or _within(target, "diffgui.gui"):
                found.append(f"{where} (the engine imports nothing from app/gui)")
        if (_within(module, "diffgui.app") or _headless(module)) and _within(target, "diffgui.gui"):
            found.append(f"{where} (app and the headless subcommands import nothing from the GUI)")
        src, dst = _method_of(module), _method_of(target)
        if src and dst and src != dst:
            allowed = ALLOWED_CROSS.get((src, dst))
            # ``from diffgui.engine.alard_lupton import SpatialKernel`` also yields the
            # pseudo-module ``...alard_lupton.SpatialKernel``: judge by the names.
            last = target.split(".")[-1]
            ok = allowed is not None and (
                (names and names <= allowed) or last in allowed
                or (not names and target.count(".") >= 3 and last == "kernel"))
            if not ok:
                found.append(f"{where} (method packages do not import each other)")
        if _within(module, "diffgui.engine.common"):
            for other in METHODS + ("psf", "params", "simulation"):
                if _within(target, f"diffgui.engine.{other}"):
                    found.append(f"{where} (common imports no method package, psf, params, "
                                 "simulation)")
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path.read_text(encoding="utf-8"), path.name == "__init__.py"


def test_layout_import_rules():
    problems = []
    for name, source, is_pkg in _modules():
        problems += violations(name, source, is_pkg)
    assert not problems, "import rules broken:\n" + "\n".join(problems)


def test_every_module_parsed():
    names = [n for n, _, _ in _modules()]
    for expected in ("diffgui.engine.api", "diffgui.engine.common.noise", "diffgui.engine.zogy",
                     "diffgui.engine.zogy.core", "diffgui.engine.hotpants", "diffgui.app.candidates",
                     "diffgui.engine.common.quality", "diffgui.engine.common.registration",
                     "diffgui.engine.zogy.bad_pixels", "diffgui.app.batch", "diffgui.app.tuning",
                     "diffgui.gui.scorecard_dock", "diffgui.cli_batch"):
        assert expected in names


@pytest.mark.parametrize("module, source", [
    ("diffgui.engine.zogy.core", "from PyQt6.QtCore import QObject"),
    ("diffgui.engine.common.fft", "def f():\n    import pyqtgraph as pg\n"),
    ("diffgui.app.run", "from qtpy import QtWidgets"),
    ("diffgui.app.tuning", "from diffgui.gui.tune_dialog import TuneDialog"),
    ("diffgui.app.batch", "def f():\n    from ..gui import series\n"),
    ("diffgui.cli_batch", "def f():\n    from PyQt6 import QtWidgets\n"),
    ("diffgui.cli_tune", "from diffgui.gui.tune_dialog import TuneDialog"),
    ("diffgui.engine.api", "from diffgui.gui.main_window import MainWindow"),
    ("diffgui.engine.sfft.solver", "from diffgui.app import candidates"),
    ("diffgui.engine.zogy.run", "from diffgui.engine.sfft import solve"),
    ("diffgui.engine.zogy.run", "from diffgui.engine import sfft"),
    ("diffgui.engine.alard_lupton.fit", "import diffgui.engine.hotpants.run"),
    ("diffgui.engine.hotpants.run", "from diffgui.engine.alard_lupton import subtract"),
    ("diffgui.engine.hotpants.outputs", "from diffgui.engine.zogy.core import zogy_subtract"),
    ("diffgui.engine.common.quality", "from diffgui.engine.psf import estimate_psf"),
    ("diffgui.engine.common.noise", "from ..simulation import simulate_pair"),
    ("diffgui.engine.common", "from .. import zogy"),
])
def test_checker_catches_bad_imports(module, source):
    is_pkg = module == "diffgui.engine.common"
    assert violations(module, source, is_pkg), f"not caught: {module}: {source!r}"


@pytest.mark.parametrize("module, source", [
    ("diffgui.engine.hotpants.outputs", "from diffgui.engine.alard_lupton import SpatialKernel"),
    ("diffgui.engine.hotpants.outputs", "from diffgui.engine.alard_lupton.kernel import SpatialKernel"),
    ("diffgui.engine.zogy.run", "from diffgui.engine.psf import estimate_psf"),
    ("diffgui.engine.api", "from diffgui.engine import zogy, sfft, alard_lupton"),
    ("diffgui.engine.zogy.core", "from diffgui.engine.zogy.fit import fit_scale_shift"),
    ("diffgui.engine.common.noise", "from diffgui.engine.errors import InputError"),
    ("diffgui.gui.main_window", "from PyQt6.QtWidgets import QMainWindow"),
    ("diffgui.app.run", "from diffgui.engine import run_zogy"),
    ("diffgui.gui.series", "from diffgui.app.lightcurve import light_curve"),
    ("diffgui.cli", "from diffgui.gui.app import main"),
])
def test_checker_accepts_allowed_imports(module, source):
    assert violations(module, source) == []
