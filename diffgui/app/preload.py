"""Modules imported once by the fork server that starts diffgui's child processes.

Every run and every candidate search goes to a child forked from this server
(:mod:`diffgui.app.isolated`), so what is imported here is already in memory in
each child instead of being imported again per run (the engine modules, pyfftw
with dask, astropy and scipy take about a second together). A module that fails
to import is skipped: a broken method must not break the other methods.
``$DIFFGUI_PRELOAD`` (comma-separated module names) adds modules, e.g. the
module of a plug-in method or the tests' test double; they are looked up on
the parent's ``sys.path`` too (``$DIFFGUI_PRELOAD_PATH``, set by
:func:`diffgui.app.isolated.context`: the fork server is not given it before
it preloads).
"""

from __future__ import annotations

import importlib
import os
import sys

MODULES = (
    "numpy", "scipy.ndimage", "scipy.spatial", "scipy.linalg", "scipy.signal", "astropy.table", "astropy.wcs",
    "astropy.io.fits", "sep", "diffgui.engine.api", "diffgui.engine.common.fft", "diffgui.engine.common.noise",
    "diffgui.engine.common.detection", "diffgui.engine.psf", "diffgui.engine.common.tiling", "diffgui.engine.zogy",
    "diffgui.engine.sfft", "diffgui.engine.alard_lupton", "diffgui.engine.hotpants",
    "diffgui.app.run", "diffgui.app.candidates",
)


def _load(names) -> list:
    loaded = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # noqa: BLE001 (a broken optional module only costs its import later)
            pass
    return loaded


LOADED = _load(MODULES)
_extra = [m for m in os.environ.get("DIFFGUI_PRELOAD", "").split(",") if m.strip()]
if _extra:
    sys.path.extend(p for p in os.environ.get("DIFFGUI_PRELOAD_PATH", "").split(os.pathsep)
                    if p and p not in sys.path)
    LOADED += _load(_extra)
