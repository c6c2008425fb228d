"""The HOTPANTS executable on PATH, options -> argument list, and a command line
back to options."""

from __future__ import annotations

import os
import re
import shlex
import shutil

from diffgui.engine.errors import ExecutableError, InputError

EXE_NAME = "hotpants"


# ---- executable and command line ----------------------------------------------------------

def find_executable(exe=None) -> str:
    """Path of the HOTPANTS executable: ``exe`` if given, else ``hotpants`` on PATH.

    Raises
    ------
    ExecutableError
        When it cannot be found or is not executable.
    """
    if exe:
        path = os.fspath(exe)
        found = shutil.which(path) if os.sep not in path else path
        if not found or not os.path.isfile(found):
            raise ExecutableError(f"HOTPANTS executable {path!r} does not exist.")
        if not os.access(found, os.X_OK):
            raise ExecutableError(f"HOTPANTS executable {path!r} is not executable (chmod +x).")
        return found
    found = shutil.which(EXE_NAME)
    if not found:
        raise ExecutableError(
            "the HOTPANTS executable 'hotpants' was not found on PATH: install it "
            "(https://github.com/acbecker/hotpants), pass _exe='/path/to/hotpants', "
            "or use backend='native'.")
    return found


def build_argv(options, exe: str = EXE_NAME) -> list:
    """Argument list ``[exe, '-opt', 'value', ...]`` for a dict of HOTPANTS options.

    Options are written in the order of the dict; None/False values are
    left out; lists are spread (``-ng 3 6 0.7 ...``). Values are checked
    against the option specs of :mod:`diffgui.engine.params`.
    """
    from diffgui.engine import params

    return [os.fspath(exe)] + params.hotpants_argv(options)


def _token_value(tok):
    try:
        v = float(tok)
    except ValueError:
        return tok
    return int(v) if v.is_integer() and re.fullmatch(r"[-+]?\d+(\.0*)?", tok) else v


def parse_command(command):
    """Split a HOTPANTS command line into the executable and its options.

    Parameters
    ----------
    command : str or list of str
        A shell-style command (as in ``command.txt`` or the DIFFCMD header)
        or an argument list.

    Returns
    -------
    exe : str
    options : dict
        Option name (lower case, no dash) -> value: True for switches, one
        value, or a tuple for options with several values. Numbers are
        converted (``'47500'`` -> 47500, ``'0.521'`` -> 0.521).
    """
    from diffgui.engine import params

    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        raise InputError("empty HOTPANTS command")
    exe, rest = argv[0], argv[1:]
    specs = {s.name: s for s in params.hotpants_option_specs()}
    out = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("-") or len(tok) < 2:
            raise InputError(f"unexpected argument {tok!r} in HOTPANTS command")
        name = tok[1:].lower()
        spec = specs.get(name)
        if spec is None:
            raise InputError(f"unknown HOTPANTS option {tok!r}")
        if spec.type == "bool":
            out[name] = True
            i += 1
            continue
        if name == "ng":
            n = int(float(rest[i + 1]))
            vals = rest[i + 1:i + 2 + 2 * n]
            i += 2 + 2 * n
        elif name == "pca":
            n = int(rest[i + 1])
            vals = rest[i + 2:i + 2 + n]
            i += 2 + n
        else:
            k = spec.nargs if isinstance(spec.nargs, int) else 1
            vals = rest[i + 1:i + 1 + k]
            i += 1 + k
        vals = tuple(_token_value(v) for v in vals)
        out[name] = vals[0] if len(vals) == 1 and name not in ("ng", "pca") else vals
    return exe, out

