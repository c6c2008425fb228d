"""Preset files: a method and all its parameter values as TOML, validated on load.

A preset looks like::

    # diffgui preset
    [diffgui]
    kind = "preset"
    schema = 1
    version = "0.1.0"            # diffgui that wrote it
    created = "2026-11-25T12:00:00+00:00"

    [preset]
    method = "zogy"
    name = "ZTF r band"
    description = ""
    unset = ["image_gain"]       # parameters explicitly None (TOML has no null)

    [params]
    dx = 0.25
    ...

Loading checks the file (TOML syntax, the ``[diffgui]`` table, the schema) and then
validates every parameter with :func:`diffgui.engine.params.validate`, so one error
names every bad field. The preset hash (:func:`preset_hash`) depends only on the
method and the complete, validated parameter values: the same tuning gives the same
hash whatever file, order, spelling of defaults or diffgui version it came from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from diffgui.engine import params as P
from diffgui.engine.errors import InputError

__all__ = ["SCHEMA_VERSION", "Preset", "PresetError", "make_preset", "save_preset", "load_preset",
           "read_preset_text", "preset_hash", "as_python_call", "persistable"]

#: Version of the preset file layout this diffgui writes and reads.
SCHEMA_VERSION = 1

#: Limits checked before parsing/validation, so that a hostile or broken file is
#: refused at once (a real preset is a few kB, lists hold a few values, tables
#: nest 3 deep): size in characters, nesting depth, items in one list or table.
MAX_PRESET_CHARS = 256 * 1024
MAX_DEPTH = 8
MAX_ITEMS = 1000


class PresetError(InputError):
    """A preset file that cannot be used; the message names the file and every problem."""


def _version() -> str:
    import diffgui

    return diffgui.__version__


def persistable(method: str, values: dict) -> dict:
    """The parameters of ``values`` a preset stores: persistable plain data, without the
    ``get_*`` output switches (the application decides which outputs it wants)."""
    out = P.preset_values(method, values)
    return {k: v for k, v in out.items() if not k.startswith("get_")}


def _canonical(v):
    """JSON-stable form: tuples as lists, sorted dicts, every number as the repr of a float
    (so a default of ``3`` and a file's ``3.0`` hash alike)."""
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v))
    return v


def preset_hash(method: str, values: dict, length: int = 12) -> str:
    """Stable hash of a method and its (validated, completed) parameter values.

    Two parameter sets that run the engine identically hash the same: defaults
    given explicitly or left out, lists or tuples, key order do not matter.
    """
    m = str(method).lower()
    clean = persistable(m, P.validate(m, dict(values)))
    text = json.dumps({"method": m, "params": _canonical(clean)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass
class Preset:
    """A method with parameter values, as saved in a preset file.

    Attributes
    ----------
    method : str
        'hotpants', 'zogy' or 'sfft'.
    params : dict
        Complete, validated parameter values (defaults filled in).
    name, description : str
    version : str
        diffgui version that wrote the file.
    schema : int
    created : str
        ISO time of writing.
    path : str or None
        File it was read from or written to.
    """

    method: str
    params: dict
    name: str = ""
    description: str = ""
    version: str = field(default_factory=_version)
    schema: int = SCHEMA_VERSION
    created: str = ""
    path: Optional[str] = None

    @property
    def hash(self) -> str:
        """:func:`preset_hash` of this preset."""
        return preset_hash(self.method, self.params)

    def call_kwargs(self) -> dict:
        """Keyword arguments for ``run_<method>(image, template, **kwargs)``."""
        return P.call_kwargs(self.method, self.params)

    def stored_values(self) -> dict:
        """What the file holds under ``[params]`` (persistable values, None included)."""
        return persistable(self.method, self.params)

    def to_toml(self) -> str:
        """The preset file text."""
        import tomli_w

        values = self.stored_values()
        unset, clean = [], {}
        for k, v in values.items():
            if v is None:
                unset.append(k)
            elif isinstance(v, dict):
                sub = {}
                for kk, vv in v.items():
                    if vv is None:
                        unset.append(f"{k}.{kk}")
                    else:
                        sub[kk] = vv
                clean[k] = sub
            else:
                clean[k] = v
        doc = {
            "diffgui": {"kind": "preset", "schema": SCHEMA_VERSION, "version": self.version,
                        "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "preset": {"method": self.method, "name": self.name, "description": self.description,
                       "hash": self.hash, "unset": unset},
            "params": clean,
        }
        return "# diffgui preset: method and parameter values (diffgui run --preset FILE)\n" + tomli_w.dumps(doc)


def make_preset(method: str, values: dict, *, name: str = "", description: str = "") -> Preset:
    """Validate ``values`` for ``method`` and return a :class:`Preset` (ParamError on bad values)."""
    m = P._method(method)  # canonical lower-case name; InputError listing the methods
    clean = P.validate(m, dict(values or {}))
    return Preset(m, clean, name=name, description=description)


def save_preset(path, method: str, values: dict, *, name: str = "", description: str = "",
                overwrite: bool = False) -> Preset:
    """Validate and write a preset file atomically.

    Raises
    ------
    ParamError
        Naming every bad value (nothing is written).
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.
    """
    from .labels import write_text_atomic

    preset = make_preset(method, values, name=name or _stem(path), description=description)
    preset.path = write_text_atomic(path, preset.to_toml(), overwrite=overwrite)
    return preset


def _stem(path) -> str:
    b = os.path.basename(os.fspath(path))
    return b[:-5] if b.lower().endswith(".toml") else os.path.splitext(b)[0]


def _looks_like(head: bytes) -> Optional[str]:
    if head.startswith(b"SIMPLE  ="):
        return "a FITS file"
    if head.lstrip().startswith((b"{", b"[{")):
        return "a JSON file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip/npz archive"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if b"\x00" in head:
        return "a binary file"
    return None


def load_preset(path) -> Preset:
    """Read and validate a preset file.

    Raises
    ------
    PresetError
        File missing, not TOML (with the line), not a diffgui preset, written by a newer
        schema, unknown method, or bad parameter values (every bad field named).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PresetError(f"preset file not found: {path}")
    if os.path.isdir(path):
        raise PresetError(f"{path} is a folder, not a preset file.")
    with open(path, "rb") as fh:
        raw = fh.read(4 * MAX_PRESET_CHARS + 1)
    if len(raw) > 4 * MAX_PRESET_CHARS:
        raise PresetError(f"{path} is larger than {4 * MAX_PRESET_CHARS // 1024} kB: not a "
                          "diffgui preset (a preset is a few kB of TOML).")
    kind = _looks_like(raw[:64])
    if kind:
        raise PresetError(f"{path} is {kind}, not a diffgui preset (a TOML file with a [diffgui] table).")
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows may start the file with a BOM
    except UnicodeDecodeError:
        raise PresetError(f"{path} is not a text file, so not a diffgui preset.") from None
    preset = read_preset_text(text, source=path)
    preset.path = path
    return preset


def _check_structure(doc, source: str) -> None:
    """Refuse documents nested deeper than MAX_DEPTH or with a list or table of more
    than MAX_ITEMS items, before any validation walks them."""
    stack = [(doc, "", 1)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PresetError(f"{source}: {where or 'the file'} is nested more than {MAX_DEPTH} "
                              "levels deep: not a diffgui preset.")
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = [(f"[{i}]", v) for i, v in enumerate(node)] if len(node) <= MAX_ITEMS else None
        else:
            continue
        if items is None or len(items) > MAX_ITEMS:
            raise PresetError(f"{source}: {where or 'the file'} has {len(node)} items, more than "
                              f"a preset value can have ({MAX_ITEMS}).")
        for key, value in items:
            if isinstance(value, (dict, list)):
                sub = f"{where}{key}" if key.startswith("[") else (f"{where}.{key}" if where else key)
                stack.append((value, sub, depth + 1))


def read_preset_text(text: str, source: str = "preset") -> Preset:
    """Parse and validate preset text (see :func:`load_preset`); ``source`` names it in errors."""
    import tomllib

    if len(text) > MAX_PRESET_CHARS:
        raise PresetError(f"{source} has {len(text)} characters, more than a preset can have "
                          f"({MAX_PRESET_CHARS}): it is not a diffgui preset.")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{source} is not valid TOML: {exc}. Fix the file or save the preset again.") from None
    except RecursionError:
        raise PresetError(f"{source}: arrays or tables are nested too deeply (more than "
                          f"{MAX_DEPTH} levels): not a diffgui preset.") from None
    _check_structure(doc, source)
    head = doc.get("diffgui")
    if not isinstance(head, dict):
        found = ", ".join(f"[{k}]" if isinstance(v, dict) else k for k, v in doc.items()) or "nothing"
        raise PresetError(f"{source} is not a diffgui preset: it has no [diffgui] table (found {found}).")
    if head.get("kind", "preset") != "preset":
        raise PresetError(f"{source} is a diffgui {head.get('kind')!r} file, not a preset.")
    schema = head.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise PresetError(f"{source}: [diffgui] schema must be an integer, got {schema!r}.")
    if schema > SCHEMA_VERSION:
        raise PresetError(f"{source} uses preset schema {schema}, written by diffgui {head.get('version', '?')}; "
                          f"this diffgui ({_version()}) reads schema {SCHEMA_VERSION} and older: upgrade diffgui.")
    if schema < 1:
        raise PresetError(f"{source}: preset schema must be >= 1, got {schema}.")
    meta = doc.get("preset")
    if not isinstance(meta, dict):
        raise PresetError(f"{source} has no [preset] table with the method name.")
    method = meta.get("method")
    if not isinstance(method, str) or method.lower() not in P.METHODS:
        raise PresetError(f"{source}: unknown method {method!r}; a preset's method is one of "
                          f"{', '.join(P.METHODS)}.")
    method = method.lower()
    values = doc.get("params", {})
    if not isinstance(values, dict):
        raise PresetError(f"{source}: [params] must be a table of parameter values.")
    values = dict(values)
    problems = {}
    unset = meta.get("unset", [])
    if not isinstance(unset, list) or not all(isinstance(u, str) for u in unset):
        problems["preset.unset"] = f"must be a list of parameter names, got {unset!r}"
        unset = []
    for name in unset:
        head_, _, sub = name.partition(".")
        if sub:
            if not isinstance(values.get(head_, {}), dict):
                problems[name] = f"{head_} is not a table"
                continue
            values[head_] = {**values.get(head_, {}), sub: None}
        elif name in values:
            problems[name] = "is listed in preset.unset and also given a value"
        else:
            values[name] = None
    specs = {s.name: s for s in P.method_specs(method)}
    for name in list(values):
        spec = specs.get(name)
        if spec is not None and not spec.persist:
            problems[name] = "cannot be set from a preset (data or a machine-specific path)"
            values.pop(name)
    try:
        clean = P.validate(method, values)
    except P.ParamError as exc:
        problems.update(exc.problems)
        clean = None
    if problems:
        raise P.ParamError(f"{source}: invalid {P.METHOD_TITLES[method]} preset", problems)
    stored = meta.get("hash")
    preset = Preset(method, clean, name=str(meta.get("name", "")), description=str(meta.get("description", "")),
                    version=str(head.get("version", "")), schema=schema, created=str(head.get("created", "")))
    if stored is not None and not isinstance(stored, str):
        raise PresetError(f"{source}: preset.hash must be text, got {stored!r}.")
    return preset


# ---- Copy as Python ---------------------------------------------------------------------

_RETURN_NAMES = {"diff": "diff", "scorr": "scorr", "psf": "psf", "convolved": "convolved",
                 "scaled": "scaled", "noise": "noise", "kernel": "kernel", "header": "header",
                 "fpsf": "fpsf", "fpsf_err": "fpsf_err"}


def _py(v) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return f"float({str(v)!r})"
        return repr(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_py(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(_py(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_py(x)}" for k, x in v.items()) + "}"
    return repr(v)


def as_python_call(method: str, values: dict, *, all_values: bool = False) -> str:
    """Python text of the engine call equivalent to running ``method`` with ``values``.

    Only parameters that differ from their defaults are written (``all_values=True``
    writes every persistable one); the ``get_*`` switches are those the application
    uses, so the unpacked names match its outputs. ``image``, ``template`` (and masks
    or noise arrays, if the pair has them) are left for the user to supply.
    """
    from . import methods as M

    m = P._method(method)
    clean = P.validate(m, dict(values or {}))
    defaults = P.defaults(m)
    kw = {}
    for k, v in persistable(m, clean).items():
        spec = P.get_spec(m, k)
        if not spec.in_signature and k == "psf_options":
            continue
        d = P.preset_values(m, {k: defaults.get(k)}).get(k)
        if all_values or v != d:
            kw[k] = tuple(v) if spec.type == "tuple_int" and isinstance(v, list) else v
    if m == "zogy" and clean.get("psf_options"):
        kw.update(clean["psf_options"])
    try:
        info = M.get(m)
        flags, outputs = dict(info.flags), list(info.outputs)
    except InputError:
        flags, outputs = {}, ["diff"]
    if m == "zogy":
        outputs = [o for o in outputs if o in ("diff", "scorr") or flags.get(f"get_{o}")
                   or (o in ("fpsf", "fpsf_err") and flags.get("get_Fpsf"))]
    else:
        outputs = ["diff"] + [o for o in outputs[1:] if flags.get(f"get_{o}")]
    func = f"run_{m}"
    lines = [f"from diffgui.engine import {func}", "",
             f"# preset hash {preset_hash(m, clean)}; image and template are 2-D arrays on one pixel grid",
             f"{', '.join(_RETURN_NAMES.get(o, o) for o in outputs)} = {func}(",
             "    image, template,"]
    for k, v in list(kw.items()) + list(flags.items()):
        lines.append(f"    {k}={_py(v)},")
    lines.append(")")
    return "\n".join(lines) + "\n"
