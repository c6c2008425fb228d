"""diffgui's subtraction engine: plain numpy/scipy/astropy/sep/pyfftw, no Qt.

Public names::

    from diffgui.engine import run_hotpants, run_zogy, run_sfft
"""

from .errors import Cancelled, DiffguiError, ExecutableError, FitError, InputError
from .subtraction import run_hotpants, run_sfft, run_zogy

__all__ = [
    "run_hotpants",
    "run_zogy",
    "run_sfft",
    "DiffguiError",
    "InputError",
    "FitError",
    "ExecutableError",
    "Cancelled",
]
