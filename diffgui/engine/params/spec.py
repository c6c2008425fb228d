"""The machinery shared by every method's specs: :class:`ParamSpec`, the value
:data:`TYPES`, :class:`ParamError`, and builders for parameters several methods share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from diffgui.engine.errors import InputError

#: Value types a spec may have, with what a value of that type may be.
TYPES = {
    "float": "a finite real number",
    "int": "an integer",
    "bool": "True or False",
    "str": "a text",
    "choice": "one of ParamSpec.choices (case-insensitive)",
    "tuple_int": "a tuple of ParamSpec.nargs integers",
    "list_float": "a variable-length list of numbers",
    "list_path": "a list of file names",
    "keyword_count": "a pair (KEY, n): header keyword stem and a count",
    "path": "a file or folder name",
    "array": "a 2-D array (not edited by forms, not saved in presets)",
    "noise": "None, True (build the noise map from the image), a 2-D sigma array or a FITS file name",
    "mask": "None, a 2-D bool array (True = bad) or a FITS file name (non-zero = bad)",
    "table": "an astropy Table of objects (x, y, ... columns)",
    "psf": "a PSFEx-style PSF dict or a 2-D PSF stamp",
    "dict": "a mapping of names to values",
    "callable": "a function",
    "logger": "False/True or a callable receiving log messages",
}

METHODS = ("hotpants", "zogy", "sfft")
METHOD_TITLES = {"hotpants": "HOTPANTS", "zogy": "ZOGY", "sfft": "SFFT"}

# Wrapper roles of HOTPANTS options (ParamSpec.wrapper).
FIXED = "fixed"        # always set by run_hotpants; not allowed in `extra`
DERIVED = "derived"    # computed by run_hotpants from data/parameters unless given in `extra`


@dataclass(frozen=True)
class ParamSpec:
    """Description of one parameter.

    Attributes
    ----------
    name : str
        Keyword name (for HOTPANTS options: the option name without dash).
    type : str
        One of :data:`TYPES`.
    default : object
        Default value, exactly as in the signature (for HOTPANTS options: the
        executable's default when the option is not passed; None = none/auto).
    help : str
        One line for tooltips and ``--help``.
    group : str
        Form group: 'Inputs', 'Noise', 'PSF', 'Kernel', 'Fitting', 'Tiling',
        'Objects', 'Outputs', 'Advanced', 'Execution' (HOTPANTS options use
        the groups of the HOTPANTS manual: 'Files', 'Template', 'Image', ...).
    unit : str
        'px', 'ADU', 'e-/ADU', 'e-', 'sigma', 'FWHM' or ''.
    bounds : (min, max) or None
        Inclusive limits; None on one side means open. Applied per element
        for 'tuple_int'.
    min_exclusive : bool
        The lower bound itself is not allowed (value > min).
    choices : tuple of str or None
        Allowed values of a 'choice'.
    nullable : bool
        None is allowed (usually "estimate from the data" or "not set").
    common : bool
        Shown first in forms; the rest goes into a collapsed advanced group.
    editable : bool
        Forms can edit it (False for arrays, tables, callables, verbose, and
        HOTPANTS options the wrapper always sets).
    persist : bool
        Saved in presets (False for data, callables and per-machine paths).
    required : bool
        Positional argument without default (image, template).
    in_signature : bool
        Present in the ``run_*`` signature; False for ``psf_options``, which
        ``run_zogy`` receives as ``**kwargs``.
    keyword_only : bool
        Keyword-only argument added by diffgui (``backend``, ``cancel``).
    flag : str or None
        HOTPANTS command-line option name (without the dash).
    nargs : int, str or None
        Number of values: tuple length, or for HOTPANTS options the number of
        command-line arguments after the flag (0 for switches, '+' variable).
    wrapper : str or None
        HOTPANTS options only: 'fixed' (run_hotpants always sets it itself;
        forms show it read-only) or 'derived' (run_hotpants computes it from
        the data or the other parameters unless ``extra`` gives it).
    """

    name: str
    type: str
    default: Any = None
    help: str = ""
    group: str = "Advanced"
    unit: str = ""
    bounds: Optional[tuple] = None
    min_exclusive: bool = False
    choices: Optional[tuple] = None
    nullable: bool = False
    common: bool = False
    editable: bool = True
    persist: bool = True
    required: bool = False
    in_signature: bool = True
    keyword_only: bool = False
    flag: Optional[str] = None
    nargs: Any = None
    wrapper: Optional[str] = None

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"ParamSpec {self.name!r}: unknown type {self.type!r}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"ParamSpec {self.name!r}: a choice needs choices")


class ParamError(InputError):
    """Invalid parameter values; ``problems`` maps each bad field to its message.

    Fields inside dict parameters are named ``extra.r``, ``psf_options.order``.
    """

    def __init__(self, title: str, problems: dict):
        self.problems = dict(problems)
        lines = [f"  - {name}: {msg}" for name, msg in self.problems.items()]
        n = len(self.problems)
        super().__init__(f"{title} ({n} problem{'s' if n != 1 else ''}):\n" + "\n".join(lines))


# ---- specs of the run_* parameters -----------------------------------------------------

def _inputs(noise_help: str):
    """The six leading data parameters shared by the three methods."""
    return [
        ParamSpec("image", "array", None, "Science image (2-D).", "Inputs",
                  required=True, editable=False, persist=False),
        ParamSpec("template", "array", None, "Template image, same shape and pixel grid.",
                  "Inputs", required=True, editable=False, persist=False),
        ParamSpec("mask", "mask", None, "Science mask, True = bad pixel; or a FITS file "
                  "(non-zero = bad; file.fits[N] or [EXTNAME] picks an HDU).", "Inputs", nullable=True,
                  persist=False),
        ParamSpec("template_mask", "mask", None, "Template mask, True = bad pixel; or a FITS file.",
                  "Inputs", nullable=True, persist=False),
        ParamSpec("err", "noise", None, f"Science noise (sigma) map; True = build it {noise_help}; "
                  "or a FITS file (file.fits[N] or [EXTNAME] picks an HDU).", "Noise", nullable=True),
        ParamSpec("template_err", "noise", None,
                  f"Template noise (sigma) map; True = build it {noise_help}; or a FITS file.", "Noise",
                  nullable=True),
    ]


def _noise_specs():
    """Read noise and noise model of the ``err=True`` maps (keyword-only in every run_*)."""
    return [
        ParamSpec("image_readnoise", "float", None,
                  "Read noise of the science image for its noise model; None = 0 "
                  "(the application reads RDNOISE from the header).", "Noise", "e-", (0, None),
                  nullable=True, common=True, keyword_only=True),
        ParamSpec("template_readnoise", "float", None, "Read noise of the template for its noise model.",
                  "Noise", "e-", (0, None), nullable=True, common=True, keyword_only=True),
        ParamSpec("noise_model", "choice", "poisson",
                  "Noise maps for err=True: poisson = counts / gain + read noise (right in crowded "
                  "fields); stdpipe = background RMS with a smoothed source term.", "Noise",
                  choices=("poisson", "stdpipe"), keyword_only=True),
    ]


def _gain(name, default, who):
    return ParamSpec(name, "float", default,
                     f"Gain of the {who} for its noise model; None = background noise only.",
                     "Noise", "e-/ADU", (0, None), min_exclusive=True, nullable=True, common=True)


def _fwhm(name, who, what):
    return ParamSpec(name, "float", None, f"FWHM of the {who} in pixels; {what}.", "PSF", "px",
                     (0, None), min_exclusive=True, nullable=True, common=True)


def _get(name, what):
    return ParamSpec(name, "bool", False, f"Also return {what}.", "Outputs")


_VERBOSE = ParamSpec("verbose", "logger", False,
                     "Log progress: True prints, a callable receives each message.",
                     "Execution", nullable=True, editable=False, persist=False)
_CANCEL = ParamSpec("cancel", "callable", None,
                    "Called between stages; returning True cancels the run.", "Execution",
                    nullable=True, editable=False, persist=False, keyword_only=True)
_MEMORY_LIMIT = ParamSpec("memory_limit", "str", None,
                          "Refuse runs whose estimated peak memory is above this (bytes, '8G', "
                          "'50%', 'off'); None = $DIFFGUI_MEMORY_LIMIT or 75% of the available "
                          "memory.", "Execution", nullable=True, editable=False, persist=False,
                          keyword_only=True)
