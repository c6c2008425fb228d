"""diffgui's subtraction engine: plain numpy/scipy/astropy/sep/pyfftw, no Qt.

Public names::

    from diffgui.engine import run_hotpants, run_zogy, run_sfft
"""

from diffgui.engine.errors import Cancelled, DiffguiError, ExecutableError, FitError, InputError
from diffgui.engine.api import run_hotpants, run_sfft, run_zogy
from diffgui.engine.simulation import simulate_pair

__all__ = [
    "run_hotpants",
    "run_zogy",
    "run_sfft",
    "DiffguiError",
    "InputError",
    "FitError",
    "ExecutableError",
    "Cancelled",
    "simulate_pair",
]
