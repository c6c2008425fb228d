"""Declarative parameter specs of the subtraction methods.

Parameter specs are data: the GUI forms, the preset validation and the
command line all read the lists below, and nobody restates a default
elsewhere. There is one list of :class:`ParamSpec` per method, in the order of
the ``run_*`` signature in :mod:`diffgui.engine.api` (the test suite
checks names, defaults and order against the real signatures), plus one list
describing every HOTPANTS 5.1.11 command-line option, for the ``extra`` dict
of ``run_hotpants``.

Typical use::

    from diffgui.engine import params
    values = params.validate("sfft", {"kernel_shape": [9, 9], "ridge": 0})
    texts = params.coerce_texts("hotpants", {"rel_r": "2.5", "extra.ko": "1"})
    kwargs = params.call_kwargs("zogy", params.validate("zogy", {}))

Value types (``ParamSpec.type``) are listed in :data:`TYPES`. Validation is
strict about Python types (``'3.5'`` is not a float: parse text with
:func:`coerce`), but accepts what JSON/TOML presets produce: ints for floats,
integral floats for ints, lists for tuples.

Modules
-------
spec              the machinery: :class:`ParamSpec`, :data:`TYPES`, :class:`ParamError`,
                  builders of parameters several methods share
hotpants, zogy, sfft  one spec list per ``run_*`` function, with its cross-parameter rules
hotpants_options  the HOTPANTS command-line options, ``extra`` validation, argv
checking          checking one value against its spec
registry          look-up by method and name, defaults, :func:`validate`
text              text and preset values: :func:`coerce`, :func:`coerce_texts`, ...

Imports allowed: the standard library, numpy and :mod:`diffgui.engine.errors`; never a
method package, psf or simulation (the method packages read their specs from here).
"""

from diffgui.engine.params.hotpants_options import hotpants_argv, validate_hotpants_extra
from diffgui.engine.params.registry import (defaults, get_spec, hotpants_option_specs,
                                            method_specs, validate)
from diffgui.engine.params.registry import _method  # noqa: F401 (used by app.presets and cli_run)
from diffgui.engine.params.spec import METHOD_TITLES, METHODS, TYPES, ParamError, ParamSpec
from diffgui.engine.params.text import (call_kwargs, coerce, coerce_texts, merge_values,
                                        preset_values)
from diffgui.engine.params.zogy import ZOGY_KWARG_NAMES

__all__ = [
    "TYPES",
    "METHODS",
    "METHOD_TITLES",
    "ParamSpec",
    "ParamError",
    "method_specs",
    "hotpants_option_specs",
    "get_spec",
    "defaults",
    "validate",
    "validate_hotpants_extra",
    "coerce",
    "coerce_texts",
    "merge_values",
    "call_kwargs",
    "preset_values",
    "hotpants_argv",
    "ZOGY_KWARG_NAMES",
]
