"""The specs of every method by name: look-up, defaults and whole-call validation."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from diffgui.engine.errors import InputError
from diffgui.engine.params.checking import _Bad, _check, _option_key, _suggest
from diffgui.engine.params.hotpants import _HOTPANTS, _rules_hotpants
from diffgui.engine.params.hotpants_options import _HOTPANTS_OPTIONS, _OPTIONS
from diffgui.engine.params.sfft import _SFFT, _rules_sfft
from diffgui.engine.params.spec import FIXED, METHOD_TITLES, METHODS, ParamError, ParamSpec
from diffgui.engine.params.zogy import _ZOGY, _rules_zogy

_SPECS = {"hotpants": _HOTPANTS, "zogy": _ZOGY, "sfft": _SFFT}
_BY_NAME = {m: {s.name: s for s in specs} for m, specs in _SPECS.items()}


# ---- look-up ----------------------------------------------------------------------------

def _method(method) -> str:
    m = str(method).strip().lower() if isinstance(method, str) else None
    if m not in _SPECS:
        raise InputError(f"unknown subtraction method {method!r}: choose one of "
                         f"{', '.join(METHODS)}.")
    return m


def method_specs(method) -> list:
    """Specs of every parameter of ``run_<method>``, in signature order.

    Parameters
    ----------
    method : str
        'hotpants', 'zogy' or 'sfft' (case-insensitive).

    Returns
    -------
    list of ParamSpec
        A new list (the specs themselves are immutable). Entries with
        ``in_signature=False`` (``psf_options``) come last.
    """
    return list(_SPECS[_method(method)])


def hotpants_option_specs(include_fixed: bool = True) -> list:
    """Specs of the HOTPANTS 5.1.11 command-line options (the ``extra`` dict keys).

    Parameters
    ----------
    include_fixed : bool
        Include the options run_hotpants always sets itself (``wrapper='fixed'``).
    """
    return [s for s in _HOTPANTS_OPTIONS if include_fixed or s.wrapper != FIXED]


def get_spec(method, name: str) -> ParamSpec:
    """Spec of one parameter; ``'extra.<option>'`` names a HOTPANTS option."""
    m = _method(method)
    name = str(name)
    if m == "hotpants" and name.startswith("extra."):
        opt = _option_key(name[6:])
        if opt in _OPTIONS:
            return _OPTIONS[opt]
        raise InputError(f"HOTPANTS has no option {opt!r}{_suggest(opt, _OPTIONS)}.")
    if name in _BY_NAME[m]:
        return _BY_NAME[m][name]
    raise InputError(f"{METHOD_TITLES[m]} has no parameter {name!r}{_suggest(name, _BY_NAME[m])}.")


def defaults(method) -> dict:
    """Default value of every parameter that has one (image/template excluded).

    ``psf_options`` (ZOGY) defaults to None like the other dicts. Mutable
    values are fresh copies.
    """
    return {s.name: copy.deepcopy(s.default) for s in method_specs(method) if not s.required}



_RULES = {"hotpants": _rules_hotpants, "zogy": _rules_zogy, "sfft": _rules_sfft}


def validate(method, values) -> dict:
    """Check parameter values and return them cleaned and completed.

    Parameters
    ----------
    method : str
        'hotpants', 'zogy' or 'sfft' (case-insensitive).
    values : dict
        Any subset of the method's parameters (see :func:`method_specs`);
        missing ones take their defaults. Text is not parsed here: use
        :func:`coerce` or :func:`coerce_texts` for CLI/text input.

    Returns
    -------
    dict
        Every parameter with a default, plus image/template if given. Numbers
        are converted to the spec type (int -> float, 5.0 -> 5), lists to
        tuples, choices to their canonical spelling, and run_hotpants' extra
        through :func:`validate_hotpants_extra`.

    Raises
    ------
    ParamError
        (an InputError) naming every bad field at once: unknown names, wrong
        types, out-of-bounds values, bad choices and cross-field rules.
    """
    m = _method(method)
    if not isinstance(values, Mapping):
        raise InputError(f"parameters must be a dict, got {type(values).__name__}")
    specs = _BY_NAME[m]
    problems = {}
    out = defaults(m)
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            hint = _suggest(name, specs)
            if m == "zogy" and not hint:
                hint = " (PSF estimation options go into psf_options)"
            problems[str(name)] = f"unknown parameter{hint}"
            continue
        try:
            out[name] = _check(spec, value)
        except _Bad as exc:
            problems[name] = str(exc)

    def ok(*names):
        return all(n not in problems for n in names)

    _RULES[m](out, problems, ok)
    if problems:
        raise ParamError(f"Invalid {METHOD_TITLES[m]} parameters", problems)
    return out


