"""Parameters as text (CLI ``--set``, form fields) and as JSON/TOML presets:
parsing, merging, call keyword arguments."""

from __future__ import annotations

import json
from collections.abc import Mapping

from diffgui.engine.errors import InputError
from diffgui.engine.params.checking import _Bad, _check, _fits_name, _suggest, _to_int
from diffgui.engine.params.hotpants_options import _clean_ng
from diffgui.engine.params.registry import _BY_NAME, _method, get_spec
from diffgui.engine.params.spec import METHOD_TITLES, ParamError, ParamSpec

# ---- text input (CLI --set, form text fields) -------------------------------------------

_TRUE = ("true", "yes", "on", "1", "y", "t")
_FALSE = ("false", "no", "off", "0", "n", "f")
_NONE = ("none", "null", "")


def _parse(spec: ParamSpec, text):
    if not isinstance(text, str):
        return text
    s = text.strip()
    t = spec.type
    if s.lower() in _NONE and (spec.nullable or t not in ("str",)):
        return None
    if t in ("bool", "noise", "logger"):
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        if t == "bool":
            raise _Bad(f"must be true or false, got {text!r}")
        if t == "noise" and s.lower() not in ("yes", "no", "on", "off"):
            return _fits_name(s)  # a FITS file (file.fits[ERR] allowed), read by the application
        raise _Bad(f"only none/true/false can be given as text, got {text!r}")
    if t == "mask":
        return _fits_name(s)
    if t == "float":
        try:
            return float(s)
        except ValueError:
            raise _Bad(f"must be a number, got {text!r}") from None
    if t == "int":
        try:
            return int(s)
        except ValueError:
            try:
                return _to_int(float(s))
            except (ValueError, _Bad):
                raise _Bad(f"must be an integer, got {text!r}") from None
    if t == "tuple_int":
        parts = s.strip("()[]").replace(",", " ").replace("x", " ").replace("X", " ").split()
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise _Bad(f"must be {spec.nargs} integers like '7,7', got {text!r}") from None
    if t == "list_float":
        return s.strip("()[]").replace(",", " ")
    if t == "list_path":
        return s.replace(",", " ").split()
    if t == "dict":
        try:
            d = json.loads(s)
        except ValueError:
            raise _Bad(f"must be a JSON object like '{{\"key\": 1}}', got {text!r}") from None
        return d
    if t in ("array", "table", "psf", "callable"):
        raise _Bad(f"a {t} cannot be given as text")
    return s


def coerce(spec: ParamSpec, text):
    """Parse ``text`` (e.g. from ``--set r=5``) into a checked value of ``spec``.

    'none'/'null'/'' give None for nullable specs; booleans accept
    true/false/yes/no/on/off/1/0; tuples accept '7,7', '7x7', '(7, 7)';
    lists accept '3 6 0.7 4 1.5 2 3.0'; dicts accept JSON. Non-text values
    are only checked.

    Raises
    ------
    ParamError
        Naming the field, when the text cannot be parsed or the value is invalid.
    """
    try:
        value = _parse(spec, text)
        if value is None and spec.flag is not None:
            return None  # a HOTPANTS option left unset
        value = _check(spec, value)
        if spec.name == "ng" and spec.flag and value is not None:
            value = _clean_ng(value)
        return value
    except _Bad as exc:
        field = f"extra.{spec.name}" if spec.flag else spec.name
        raise ParamError(f"Cannot use {text!r}", {field: str(exc)}) from None


def _guess(text: str):
    """Value of a free-form option (psf_options): JSON if it parses, else text."""
    try:
        return json.loads(text)
    except ValueError:
        low = text.strip().lower()
        if low in ("true", "false", "none"):
            return {"true": True, "false": False, "none": None}[low]
        return text


def coerce_texts(method, texts) -> dict:
    """Parse ``{name: text}`` pairs (CLI ``--set name=text``) into values.

    Names ``extra.<option>`` (HOTPANTS) and ``psf_options.<key>`` (ZOGY) go
    into those dicts. The result is not completed with defaults; combine it
    with a preset by :func:`merge_values`, then :func:`validate`.

    Raises
    ------
    ParamError
        Naming every field that cannot be parsed.
    """
    m = _method(method)
    out, problems = {}, {}
    for name, text in texts.items():
        head, _, sub = str(name).partition(".")
        try:
            if m == "zogy" and head == "psf_options" and sub:
                out.setdefault("psf_options", {})[sub] = _guess(text)
                continue
            spec = get_spec(m, name)
            value = coerce(spec, text)
            if spec.flag:
                out.setdefault("extra", {})[spec.name] = value
            else:
                out[name] = value
        except ParamError as exc:
            problems.update(exc.problems)
        except InputError:
            problems[str(name)] = f"unknown parameter{_suggest(name, _BY_NAME[m])}"
    if problems:
        raise ParamError(f"Invalid {METHOD_TITLES[m]} parameter text", problems)
    return out


def merge_values(base, overrides) -> dict:
    """``base`` updated by ``overrides``; dict parameters (extra, psf_options) merge key-wise."""
    out = dict(base or {})
    for k, v in (overrides or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


# ---- handing values on ------------------------------------------------------------------

def call_kwargs(method, values) -> dict:
    """Keyword arguments for ``run_<method>(image, template, **kwargs)``.

    Drops image/template and parameters not in the signature; ZOGY's PSF
    fields (``sn``, ``isolation``, ...) and its ``psf_options`` are spread into
    the keywords (its ``**kwargs``; ``psf_options`` win).
    """
    m = _method(method)
    specs = _BY_NAME[m]
    out = {k: v for k, v in values.items()
           if k in specs and specs[k].in_signature and not specs[k].required}
    if m == "zogy":
        from diffgui.engine.params.zogy import ZOGY_KWARG_NAMES

        out.update((k, values[k]) for k in ZOGY_KWARG_NAMES if k in values)
    if m == "zogy" and values.get("psf_options"):
        out.update(values["psf_options"])
    return out


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def preset_values(method, values) -> dict:
    """The persistable subset of ``values`` as JSON-friendly data.

    Keeps specs with ``persist=True`` whose value is plain data (so a noise
    *array* passed as ``err`` is dropped, ``err=True`` is kept); tuples
    become lists.
    """
    specs = _BY_NAME[_method(method)]
    out = {}
    for k, v in values.items():
        spec = specs.get(k)
        if spec is None or not spec.persist:
            continue
        if v is not None and not isinstance(v, (bool, int, float, str, tuple, list, Mapping)):
            continue
        out[k] = _jsonable(v)
    return out


