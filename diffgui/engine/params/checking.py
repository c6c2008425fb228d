"""Checking one value against its :class:`~.spec.ParamSpec` (types, bounds, choices)."""

from __future__ import annotations

import difflib
import math
import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np

from diffgui.engine.params.spec import ParamSpec


def _suggest(name, known) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _option_key(key) -> str:
    # HOTPANTS option names are case-insensitive; accept '-r' as well as 'r'.
    return str(key).strip().lstrip("-").lower()



# ---- checking one value -----------------------------------------------------------------

class _Bad(Exception):
    """One field's problem (collected, then raised together as ParamError)."""


def _is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return (isinstance(v, (numbers.Real, np.floating, np.integer))
            and not isinstance(v, (bool, np.bool_)))


def _is_arraylike(v) -> bool:
    return isinstance(v, (np.ndarray, list, tuple)) or hasattr(v, "__array__")


def _to_int(v, what="an integer"):
    if _is_int(v):
        return int(v)
    if _is_real(v) and math.isfinite(float(v)) and float(v).is_integer():
        return int(v)
    raise _Bad(f"must be {what}, got {v!r}")


def _to_float(v):
    if not _is_real(v):
        raise _Bad(f"must be a number, got {type(v).__name__} {v!r}"
                   + (" (use coerce() to parse text)" if isinstance(v, str) else ""))
    f = float(v)
    if not math.isfinite(f):
        raise _Bad(f"must be a finite number, got {v!r}")
    return f


def _fmt(x):
    return repr(int(x)) if float(x).is_integer() else repr(x)


def _check_bounds(spec, v):
    if spec.bounds is None:
        return
    lo, hi = spec.bounds
    low_bad = lo is not None and (v <= lo if spec.min_exclusive else v < lo)
    if low_bad or (hi is not None and v > hi):
        if lo is not None and hi is not None:
            rng = f"in ({_fmt(lo)}, {_fmt(hi)}]" if spec.min_exclusive else \
                f"in [{_fmt(lo)}, {_fmt(hi)}]"
        elif lo is not None:
            rng = f"{'>' if spec.min_exclusive else '>='} {_fmt(lo)}"
        else:
            rng = f"<= {_fmt(hi)}"
        raise _Bad(f"must be {rng}, got {v!r}")


def _path(v):
    if not isinstance(v, (str, os.PathLike)):
        raise _Bad(f"must be a file name, got {type(v).__name__} {v!r}")
    p = os.fspath(v)
    if not isinstance(p, str) or not p.strip():
        raise _Bad("must be a non-empty file name")
    return p


_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz", ".gz")


def _fits_name(v):
    """A FITS file name, optionally with an ``[N]``/``[EXTNAME]`` HDU suffix."""
    p = _path(v).strip()
    base = p[:p.rindex("[")] if p.endswith("]") and "[" in p else p
    if not base.lower().endswith(_FITS_SUFFIXES):
        raise _Bad(f"must be None, True/False, an array or a FITS file name (.fits, .fits.fz, "
                   f"optionally with [N] or [EXTNAME]), got {v!r}")
    return p


def _bounded(spec, v, convert):
    out = convert(v)
    _check_bounds(spec, out)
    return out


def _bool(spec, v):
    if not isinstance(v, (bool, np.bool_)):
        raise _Bad(f"must be True or False, got {v!r}")
    return bool(v)


def _str(spec, v):
    if not isinstance(v, str):
        raise _Bad(f"must be a text, got {v!r}")
    return v


def _choice(spec, v):
    if isinstance(v, str):
        for c in spec.choices:
            if v.strip().lower() == str(c).lower():
                return c
    raise _Bad(f"must be one of {', '.join(map(repr, spec.choices))}, got {v!r}")


def _tuple_int(spec, v):
    if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray)):
        raise _Bad(f"must be {spec.nargs} integers, got {v!r}")
    if spec.nargs is not None and len(v) != spec.nargs:
        raise _Bad(f"must have {spec.nargs} values, got {len(v)}: {tuple(v)!r}")
    out = tuple(_to_int(x, "integers") for x in v)
    for x in out:
        _check_bounds(spec, x)
    return out


def _list_float(spec, v):
    if isinstance(v, str):
        v = v.split()
        try:
            v = [float(x) for x in v]
        except ValueError:
            raise _Bad(f"must be numbers separated by spaces, got {' '.join(v)!r}") from None
    if not isinstance(v, (Sequence, np.ndarray)) or len(v) == 0:
        raise _Bad(f"must be a non-empty list of numbers, got {v!r}")
    return tuple(int(x) if _is_int(x) else _to_float(x) for x in v)


def _list_path(spec, v):
    if isinstance(v, (str, os.PathLike)):
        v = [v]
    if not isinstance(v, Sequence) or len(v) == 0:
        raise _Bad(f"must be a list of file names, got {v!r}")
    v = list(v)
    if _is_int(v[0]) or (isinstance(v[0], str) and v[0].strip().isdigit()):
        n = int(v[0])
        if n != len(v) - 1:
            raise _Bad(f"count {n} does not match the {len(v) - 1} file names")
        v = v[1:]
        if not v:
            raise _Bad("needs at least one file name")
    return tuple(_path(x) for x in v)


def _keyword_count(spec, v):
    if isinstance(v, str):
        v = v.split()
    if not isinstance(v, Sequence) or len(v) != 2 or not isinstance(v[0], str):
        raise _Bad(f"must be (KEY, n), e.g. ('REGION', 4), got {v!r}")
    key, n = v[0].strip(), v[1]
    if not key or " " in key:
        raise _Bad(f"keyword stem must be one word, got {key!r}")
    try:
        n = int(n) if isinstance(n, str) else _to_int(n)
    except ValueError:
        raise _Bad(f"count must be an integer, got {n!r}") from None
    if n < 1:
        raise _Bad(f"count must be >= 1, got {n}")
    return (key, n)


def _flag_or(kind):
    """A checker taking True/False as is and otherwise a value that ``kind`` accepts."""
    def check(spec, v):
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        return kind(spec, v)
    return check


def _noise(spec, v):
    if isinstance(v, (str, os.PathLike)):
        return _fits_name(v)  # a FITS file, read by the application
    return _accepted(v, _is_arraylike(v), "None, True/False, a 2-D sigma array or a FITS file name")


def _mask(spec, v):
    if isinstance(v, (str, os.PathLike)):
        return _fits_name(v)
    ok = not isinstance(v, (bool, np.bool_)) and _is_arraylike(v)
    return _accepted(v, ok, "None, a 2-D bool array or a FITS file name")


def _accepted(v, ok, what):
    """``v`` when ``ok``, else the problem: it must be ``what``."""
    if not ok:
        raise _Bad(f"must be {what}, got {type(v).__name__}")
    return v


def _is_table(v) -> bool:
    return not isinstance(v, str) and (hasattr(v, "colnames") or hasattr(v, "columns")
                                       or isinstance(v, Mapping)
                                       or (isinstance(v, np.ndarray) and bool(v.dtype.names)))


#: One checker per value type of ``TYPES``: ``checker(spec, value) -> cleaned value``
#: (bounds are checked inside; None is handled by :func:`_check`).
_CHECKERS = {
    "float": lambda spec, v: _bounded(spec, v, _to_float),
    "int": lambda spec, v: _bounded(spec, v, _to_int),
    "bool": _bool,
    "str": _str,
    "choice": _choice,
    "tuple_int": _tuple_int,
    "list_float": _list_float,
    "list_path": _list_path,
    "keyword_count": _keyword_count,
    "path": lambda spec, v: _path(v),
    "array": lambda spec, v: _accepted(v, _is_arraylike(v), "a 2-D array"),
    "noise": _flag_or(_noise),
    "mask": _mask,
    "table": lambda spec, v: _accepted(v, _is_table(v), "a table of objects (astropy Table)"),
    "psf": lambda spec, v: _accepted(v, isinstance(v, Mapping) or (_is_arraylike(v) and not isinstance(v, str)),
                                     "a PSF dict or a 2-D PSF stamp"),
    "dict": lambda spec, v: dict(_accepted(v, isinstance(v, Mapping), "a dict")),
    "callable": lambda spec, v: _accepted(v, callable(v), "callable"),
    "logger": _flag_or(lambda spec, v: _accepted(v, callable(v), "True/False or a callable")),
}


def _check(spec: ParamSpec, v):
    """Return the cleaned value of ``v`` for ``spec`` or raise _Bad."""
    if v is None:
        if spec.nullable:
            return None
        raise _Bad("must not be None")
    checker = _CHECKERS.get(spec.type)
    if checker is None:  # pragma: no cover - guarded by ParamSpec.__post_init__
        raise _Bad(f"unsupported type {spec.type!r}")
    return checker(spec, v)
