"""The HOTPANTS executable: options -> command line, running it, reading its outputs.

``run_hotpants`` (in :mod:`diffgui.engine.api`) uses this module in
four steps:

1. :func:`derive_options` chooses the options stdpipe's wrapper would
   (thresholds from the data, gains, r/rss from the FWHMs, the ng basis
   from sigma_match, regions) and lets ``extra`` override them;
2. :func:`run` writes the inputs to a working folder, runs the executable
   with an argument list (never a shell), streams its output to the log,
   kills it on cancel or timeout, and reads the outputs back;
3. :func:`read_outputs` turns the files into arrays, the header and a
   :class:`~diffgui.engine.alard_lupton.SpatialKernel` rebuilt from the
   kernel table;
4. :func:`check_outputs` turns HOTPANTS's silent failures (exit code 0, no
   stamps, all-zero output, FATAL messages) into
   :class:`~diffgui.engine.errors.ExecutableError` with the reason.

Modules
-------
command_line  the executable on PATH, options -> argv, a command line -> options
options       :func:`derive_options` (stdpipe's choices from the data), stamps from objects
process       :func:`run_process`: streaming, cancel, timeout
outputs       :func:`read_outputs`, :class:`HotpantsOutputs`, :func:`residual_gradient`
failures      :func:`check_process`, :func:`check_outputs`: silent failures -> errors
run           :func:`run`: a complete run on arrays in a work folder

Imports allowed: numpy/astropy, :mod:`diffgui.engine.errors`, :mod:`diffgui.engine.common`,
:mod:`diffgui.engine.params` (option specs) and, from the method packages, only
:mod:`diffgui.engine.alard_lupton`'s kernel model (:class:`SpatialKernel`, to rebuild the
executable's kernel table).
"""

from diffgui.engine.hotpants.command_line import EXE_NAME, build_argv, find_executable, parse_command
from diffgui.engine.hotpants.failures import check_outputs
from diffgui.engine.hotpants.options import derive_options, stamps_from_obj
from diffgui.engine.hotpants.outputs import HotpantsOutputs, read_outputs, residual_gradient
from diffgui.engine.hotpants.process import ProcessResult, run_process
from diffgui.engine.hotpants.run import DEFAULT_TIMEOUT, MASK_BAD_BIT, read_xy_file, run

__all__ = [
    "EXE_NAME",
    "DEFAULT_TIMEOUT",
    "MASK_BAD_BIT",
    "find_executable",
    "build_argv",
    "parse_command",
    "derive_options",
    "stamps_from_obj",
    "ProcessResult",
    "run_process",
    "HotpantsOutputs",
    "read_outputs",
    "check_outputs",
    "run",
    "residual_gradient",
    "read_xy_file",
]
