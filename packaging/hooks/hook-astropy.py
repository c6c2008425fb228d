# Replaces the community hook for astropy, which imports every astropy submodule,
# tests and conftest files included: with pytest installed but not matplotlib,
# astropy.visualization.wcsaxes's tests raise pytest's Skipped and the build stops.
# diffgui needs io.fits, wcs, table (and its I/O registry), units, stats, coordinates.
from PyInstaller.utils.hooks import collect_data_files, collect_submodules, copy_metadata

_SKIP = {"tests", "conftest", "visualization", "samp", "setup_package"}


def _keep(name):
    parts = name.split(".")
    return not (set(parts[1:]) & _SKIP) and not name.startswith(("astropy.visualization", "astropy.samp"))


hiddenimports = collect_submodules("astropy", filter=_keep) + ["numpy.lib.recfunctions"]
datas = collect_data_files("astropy", excludes=["**/tests/**", "**/tests", "**/visualization/**"])
datas += [(p, t) for p, t in collect_data_files("astropy", include_py_files=True)
          if p.endswith(("_parsetab.py", "_lextab.py"))]
datas += copy_metadata("astropy") + copy_metadata("numpy")
