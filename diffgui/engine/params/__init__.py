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
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from diffgui.engine.errors import InputError

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
]

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
    "noise": "None, True (build the noise map from the image) or a 2-D sigma array",
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
        ParamSpec("mask", "array", None, "Science mask, True = bad pixel.", "Inputs",
                  nullable=True, editable=False, persist=False),
        ParamSpec("template_mask", "array", None, "Template mask, True = bad pixel.",
                  "Inputs", nullable=True, editable=False, persist=False),
        ParamSpec("err", "noise", None, f"Science noise (sigma) map; True = build it {noise_help}.",
                  "Noise", nullable=True),
        ParamSpec("template_err", "noise", None,
                  f"Template noise (sigma) map; True = build it {noise_help}.", "Noise",
                  nullable=True),
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

_HOTPANTS = _inputs("from the image and image_gain (template: template_gain)") + [
    ParamSpec("extra", "dict", None,
              "HOTPANTS options by name (see hotpants_option_specs); they override the wrapper's.",
              "Advanced", nullable=True),
    _fwhm("image_fwhm", "science image", "sets r, rss and the ng basis"),
    _fwhm("template_fwhm", "template", "with image_fwhm sets the ng basis"),
    _gain("image_gain", None, "science image"),
    _gain("template_gain", 1000, "template"),
    ParamSpec("rel_r", "float", 3, "Kernel half-width r = ceil(rel_r * image_fwhm).",
              "Kernel", "FWHM", (0, None), min_exclusive=True, common=True),
    ParamSpec("rel_rss", "float", 4,
              "Substamp half-width rss = ceil(rel_rss * image_fwhm); keep >= rel_r.",
              "Kernel", "FWHM", (0, None), min_exclusive=True, common=True),
    ParamSpec("nx", "int", 1, "Independent kernel regions along x.", "Tiling", "",
              (1, None), common=True),
    ParamSpec("ny", "int", None, "Independent kernel regions along y; None = nx.", "Tiling",
              "", (1, None), nullable=True, common=True),
    ParamSpec("obj", "table", None,
              "Objects detected on the science image, used to place the kernel stamps.",
              "Objects", nullable=True, editable=False, persist=False),
    _get("get_convolved", "the convolved template"),
    _get("get_scaled", "the noise-normalised difference"),
    _get("get_noise", "the difference noise map"),
    _get("get_kernel", "the kernel table"),
    _get("get_header", "the HOTPANTS output header"),
    ParamSpec("_tmpdir", "path", None,
              "Folder in which a temporary working folder is made (and removed).",
              "Execution", nullable=True, persist=False),
    ParamSpec("_workdir", "path", None,
              "Folder for the working files, kept after the run (debugging).",
              "Execution", nullable=True, persist=False),
    ParamSpec("_exe", "path", None, "HOTPANTS executable; None = search PATH.",
              "Execution", nullable=True, persist=False),
    _VERBOSE,
    ParamSpec("backend", "choice", "auto",
              "auto = the executable if found, else native; exe = HOTPANTS binary; "
              "native = numpy Alard-Lupton.", "Execution",
              choices=("auto", "exe", "native"), common=True, keyword_only=True),
    _CANCEL,
]

_ZOGY = _inputs("from the image and its gain; None also builds it") + [
    ParamSpec("image_psf", "psf", None, "PSF of the science image; None = estimate it.",
              "PSF", nullable=True, editable=False, persist=False),
    ParamSpec("template_psf", "psf", None, "PSF of the template; None = estimate it.",
              "PSF", nullable=True, editable=False, persist=False),
    _gain("image_gain", None, "science image"),
    _gain("template_gain", None, "template"),
    _fwhm("image_fwhm", "science image", "None = estimate it"),
    _fwhm("template_fwhm", "template", "None = estimate it"),
    ParamSpec("scale", "float", None,
              "Template flux scale relative to the science image; None = from matched objects.",
              "Fitting", "", (0, None), min_exclusive=True, nullable=True, common=True),
    ParamSpec("psf_clean", "float", 0,
              "Zero PSF pixels below this fraction of the peak (0 = keep all).", "PSF", "",
              (0, 1)),
    ParamSpec("dx", "float", 0.25, "Astrometric uncertainty (sigma) along x.", "Fitting",
              "px", (0, None)),
    ParamSpec("dy", "float", 0.25, "Astrometric uncertainty (sigma) along y.", "Fitting",
              "px", (0, None)),
    ParamSpec("nx", "int", 1, "Sub-images along x.", "Tiling", "", (1, None), common=True),
    ParamSpec("ny", "int", None, "Sub-images along y; None = nx.", "Tiling", "", (1, None),
              nullable=True, common=True),
    ParamSpec("overlap", "int", 50, "Overlap of neighbouring sub-images.", "Tiling", "px",
              (0, None)),
    ParamSpec("fit_scale", "bool", True, "Fit the template flux scale.", "Fitting",
              common=True),
    ParamSpec("fit_shift", "bool", True, "Fit a sub-pixel template shift.", "Fitting",
              common=True),
    ParamSpec("good_regions", "array", None,
              "Boolean map of the pixels used for the scale/shift fit.", "Fitting",
              nullable=True, editable=False, persist=False),
    ParamSpec("image_obj", "table", None, "Objects detected on the science image.",
              "Objects", nullable=True, editable=False, persist=False),
    ParamSpec("template_obj", "table", None, "Objects detected on the template.",
              "Objects", nullable=True, editable=False, persist=False),
    _get("get_psf", "the PSF of the difference image"),
    _get("get_Fpsf", "the PSF-photometry flux image and its error"),
    ParamSpec("nthreads", "int", 0, "FFT threads; 0 = all usable cores.", "Execution", "",
              (0, None)),
    _VERBOSE,
    _CANCEL,
    ParamSpec("psf_options", "dict", None,
              "Options of the PSF estimation, passed to run_zogy as **kwargs.", "PSF",
              nullable=True, editable=False, in_signature=False),
]

_SFFT = _inputs("from the image and image_gain (template: template_gain)") + [
    _gain("image_gain", None, "science image"),
    _gain("template_gain", None, "template"),
    ParamSpec("kernel_shape", "tuple_int", (7, 7), "Kernel size (ky, kx); both odd.",
              "Kernel", "px", (1, None), nargs=2, common=True),
    ParamSpec("kernel_poly_order", "int", 2, "Polynomial order of the kernel's spatial variation.",
              "Kernel", "", (0, None), common=True),
    ParamSpec("bg_poly_order", "int", 2, "Polynomial order of the differential background.",
              "Kernel", "", (0, None), common=True),
    ParamSpec("flux_poly_order", "int", 1,
              "Polynomial order of the kernel sum (flux scale); <= kernel_poly_order.",
              "Kernel", "", (0, None), common=True),
    ParamSpec("flux_penalty", "float", 1000.0, "Weight of the kernel-sum constraint.",
              "Fitting", "", (0, None)),
    ParamSpec("ridge", "float", 1e-06, "Tikhonov regularisation, relative to the system scale.",
              "Fitting", "", (0, None)),
    ParamSpec("sigma_clip", "float", 3.0, "Outlier rejection threshold; 0 or None = no clipping.",
              "Fitting", "sigma", (0, None), nullable=True, common=True),
    ParamSpec("max_iter", "int", 5, "Maximum number of fit/clip passes.", "Fitting", "",
              (1, None)),
    ParamSpec("obj", "table", None,
              "Objects (x, y columns) around which the kernel is fitted; None = whole image.",
              "Objects", nullable=True, editable=False, persist=False),
    ParamSpec("obj_size", "int", None,
              "Half-size of the fit region around each object; None = 3 x median FWHM or 15.",
              "Objects", "px", (1, None), nullable=True),
    _get("get_convolved", "the convolved template"),
    _get("get_scaled", "the noise-normalised difference"),
    _get("get_noise", "the difference noise map"),
    _get("get_kernel", "the fit result (kernel coefficients)"),
    _VERBOSE,
    _CANCEL,
    ParamSpec("decorrelate", "bool", False,
              "Whiten the difference noise (decorrelation kernel, as the SFFT authors do).",
              "Outputs", keyword_only=True),
    ParamSpec("fit_weights", "choice", "noise",
              "Fit weights: inverse variance of the noise maps, or uniform (bright stars count more).",
              "Fitting", choices=("noise", "uniform"), keyword_only=True),
]


# ---- specs of the HOTPANTS 5.1.11 command-line options ---------------------------------

_NARGS = {"bool": 0, "list_float": "+", "list_path": "+", "keyword_count": 2}


def _opt(flag, type, default, help, group, unit="", bounds=None, *, min_exclusive=False,
         choices=None, wrapper=None, common=False, nargs=None):
    if nargs is None:
        nargs = _NARGS.get(type, 1)
    return ParamSpec(flag, type, default, help, group, unit, bounds,
                     min_exclusive=min_exclusive, choices=choices,
                     nullable=default is None or type == "path", common=common,
                     editable=wrapper != FIXED, flag=flag, nargs=nargs, wrapper=wrapper)


def _side(p, who, group):
    """Thresholds and noise options of one image: p = 't' (template) or 'i' (science)."""
    return [
        _opt(p + "u", "float", 25000.0, f"{who} pixels >= this are saturated (bad).", group,
             "ADU", wrapper=DERIVED, common=True),
        _opt(p + "uk", "float", None, f"{who} upper limit for kernel stamps; None = {p}u.",
             group, "ADU", wrapper=DERIVED),
        _opt(p + "l", "float", 0.0, f"{who} pixels <= this are bad (0 breaks sky-subtracted data).",
             group, "ADU", wrapper=DERIVED, common=True),
        _opt(p + "g", "float", 1.0, f"{who} gain.", group, "e-/ADU", (0, None),
             min_exclusive=True, wrapper=DERIVED, common=True),
        _opt(p + "r", "float", 0.0, f"{who} read noise.", group, "e-", (0, None), common=True),
        _opt(p + "p", "float", 0.0, f"{who} pedestal, subtracted from data and thresholds.",
             group, "ADU"),
        _opt(p + "ni", "path", None, f"{who} noise (sigma) image; replaces the gain model.",
             group, wrapper=FIXED),
        _opt(p + "mi", "path", None, f"{who} mask image (nonzero = bad).", group, wrapper=FIXED),
    ]


_HOTPANTS_OPTIONS = [
    # Files
    _opt("inim", "path", None, "Science image file.", "Files", wrapper=FIXED),
    _opt("tmplim", "path", None, "Template image file.", "Files", wrapper=FIXED),
    _opt("outim", "path", None, "Difference image file.", "Files", wrapper=FIXED),
    # Template / science thresholds and noise
    *_side("t", "Template", "Template"),
    *_side("i", "Science", "Image"),
    # Kernel
    _opt("r", "int", 10, "Kernel half-width; the kernel is (2r+1)^2 pixels.", "Kernel", "px",
         (1, None), wrapper=DERIVED, common=True),
    _opt("ng", "list_float", (3, 6, 0.7, 4, 1.5, 2, 3.0),
         "Gaussian basis: N d1 s1 ... dN sN (polynomial degree, sigma in px).", "Kernel",
         wrapper=DERIVED, common=True),
    _opt("pca", "list_path", None, "Custom basis kernel images (their size fixes r).", "Kernel"),
    _opt("kcs", "int", None, "Block size at which the kernel is re-evaluated; None = 2r+1.",
         "Kernel", "px", (1, None)),
    _opt("ki", "path", None, "Reuse a kernel file written with -oki (needs the same r).",
         "Kernel"),
    # Spatial model
    _opt("ko", "int", 2, "Polynomial order of the kernel variation within a region.",
         "Spatial model", "", (0, None), wrapper=DERIVED, common=True),
    _opt("bgo", "int", 1, "Polynomial order of the differential background.",
         "Spatial model", "", (0, None), wrapper=DERIVED, common=True),
    # Regions
    _opt("nrx", "int", 1, "Independent regions along x.", "Regions", "", (1, None),
         wrapper=DERIVED),
    _opt("nry", "int", 1, "Independent regions along y.", "Regions", "", (1, None),
         wrapper=DERIVED),
    _opt("rf", "path", None, "Region file, 'xmin:xmax,ymin:ymax' per line (0-based).",
         "Regions"),
    _opt("rkw", "keyword_count", None, "Regions from header keywords KEY0..KEY(n-1).",
         "Regions"),
    _opt("gd", "tuple_int", None, "Good-data section x0 x1 y0 y1 (0-based, end exclusive).",
         "Regions", "px", (0, None), nargs=4),
    # Stamps
    _opt("nsx", "int", 10, "Stamps per region along x.", "Stamps", "", (1, None), common=True),
    _opt("nsy", "int", 10, "Stamps per region along y.", "Stamps", "", (1, None), common=True),
    _opt("nss", "int", 3, "Candidate substamps kept per stamp.", "Stamps", "", (1, None)),
    _opt("rss", "int", 15, "Substamp half-width; must be >= r.", "Stamps", "px", (1, None),
         wrapper=DERIVED, common=True),
    _opt("ssf", "path", None, "Substamp centres file, 'x y' per line (1-based).", "Stamps",
         wrapper=DERIVED),
    _opt("cmp", "path", None, "Like ssf, but the first line is skipped.", "Stamps"),
    _opt("afssc", "int", 1, "1 = find more substamps after the file positions, 0 = don't.",
         "Stamps", "", (0, 1)),
    _opt("ft", "float", 20.0, "Substamp peaks must exceed the stamp sky by ft sigma.",
         "Stamps", "sigma", (0, None), common=True),
    _opt("sft", "float", 0.5, "Factor applied to ft when too few stamps were found.",
         "Stamps", "", (0, 1)),
    _opt("nft", "float", 0.1, "Fraction of stamps that must have a substamp.", "Stamps", "",
         (0, 1)),
    _opt("savexy", "path", None, "Write the stamp positions as ds9 regions.", "Stamps",
         wrapper=FIXED),
    # Fit / clip
    _opt("ks", "float", 2.0, "Stamp rejection threshold.", "Fit/clip", "sigma", (0, None),
         min_exclusive=True, common=True),
    _opt("ssig", "float", 3.0, "Sigma-clipping threshold in all statistics.", "Fit/clip",
         "sigma", (0, None), min_exclusive=True),
    _opt("fom", "choice", "v", "Figure of merit: v = variance, s = std, h = histogram width.",
         "Fit/clip", choices=("v", "s", "h")),
    # Direction / photometry
    _opt("c", "choice", "b", "Image to convolve: t = template, i = science, b = best of both.",
         "Direction", choices=("t", "i", "b"), wrapper=DERIVED, common=True),
    _opt("n", "choice", "t", "Photometric system of the output: t, i or u (unconvolved).",
         "Direction", choices=("t", "i", "u"), wrapper=DERIVED, common=True),
    _opt("sconv", "bool", False, "All regions use the direction chosen for region 0.",
         "Direction"),
    # Masking
    _opt("kfm", "float", 0.99, "Flag output pixels getting more than 1-kfm of |K| from bad pixels.",
         "Masking", "", (0, 1)),
    _opt("mins", "float", 1.0, "Grow bad input pixels by mins*r/2 (as 'OK' pixels).",
         "Masking", "", (0, None)),
    _opt("mous", "float", 1.0, "Negative = do not blank bad output pixels.", "Masking"),
    _opt("fi", "float", 1e-30, "Fill value of bad pixels in the difference image.", "Masking",
         "ADU"),
    _opt("fin", "float", 0.0, "Fill value of bad pixels in the noise image.", "Masking", "ADU"),
    _opt("okn", "bool", False, "Rescale the noise of 'OK' pixels to match good pixels.",
         "Masking"),
    _opt("convvar", "bool", False, "Propagate variance with K instead of K^2 (experimental).",
         "Masking"),
    # Outputs
    _opt("oni", "path", None, "Noise (sigma) image file.", "Outputs", wrapper=FIXED),
    _opt("ond", "path", None, "Noise-scaled difference image file.", "Outputs", wrapper=FIXED),
    _opt("oci", "path", None, "Convolved image file.", "Outputs", wrapper=FIXED),
    _opt("omi", "path", None, "Output mask file (16-bit flag bits).", "Outputs", wrapper=FIXED),
    _opt("nim", "bool", False, "Add the noise image as an HDU of the difference file.",
         "Outputs", wrapper=FIXED),
    _opt("ndm", "bool", False, "Add the noise-scaled difference as an HDU.", "Outputs",
         wrapper=FIXED),
    _opt("cim", "bool", False, "Add the convolved image as an HDU.", "Outputs", wrapper=FIXED),
    _opt("allm", "bool", False, "Add convolved, noise-scaled and noise HDUs.", "Outputs",
         wrapper=FIXED),
    _opt("hki", "bool", False, "Append the kernel table to the difference file.", "Outputs",
         wrapper=FIXED),
    _opt("oki", "path", None, "Separate kernel file.", "Outputs", wrapper=FIXED),
    _opt("nc", "bool", False, "Do not overwrite existing output files.", "Outputs"),
    _opt("sht", "bool", False, "Write outputs as 16-bit integers.", "Outputs"),
    _opt("obs", "float", 1.0, "BSCALE of 16-bit outputs.", "Outputs"),
    _opt("obz", "float", 0.0, "BZERO of 16-bit outputs.", "Outputs"),
    _opt("nsht", "bool", False, "Write the noise image as 16-bit integers.", "Outputs"),
    _opt("nbs", "float", 1.0, "BSCALE of the 16-bit noise image.", "Outputs"),
    _opt("nbz", "float", 0.0, "BZERO of the 16-bit noise image.", "Outputs"),
    # Misc
    _opt("v", "int", 1, "Verbosity 0-2.", "Misc", "", (0, 2), wrapper=DERIVED),
    _opt("ef", "path", None, "Parsed but unused by HOTPANTS 5.1.11.", "Misc"),
    _opt("sum", "bool", False, "Parsed but unused by HOTPANTS 5.1.11.", "Misc"),
]

_SPECS = {"hotpants": _HOTPANTS, "zogy": _ZOGY, "sfft": _SFFT}
_BY_NAME = {m: {s.name: s for s in specs} for m, specs in _SPECS.items()}
_OPTIONS = {s.name: s for s in _HOTPANTS_OPTIONS}


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


def _check(spec: ParamSpec, v):
    """Return the cleaned value of ``v`` for ``spec`` or raise _Bad."""
    if v is None:
        if spec.nullable:
            return None
        raise _Bad("must not be None")
    t = spec.type
    if t == "float":
        out = _to_float(v)
    elif t == "int":
        out = _to_int(v)
    elif t == "bool":
        if not isinstance(v, (bool, np.bool_)):
            raise _Bad(f"must be True or False, got {v!r}")
        return bool(v)
    elif t == "str":
        if not isinstance(v, str):
            raise _Bad(f"must be a text, got {v!r}")
        return v
    elif t == "choice":
        if isinstance(v, str):
            for c in spec.choices:
                if v.strip().lower() == str(c).lower():
                    return c
        raise _Bad(f"must be one of {', '.join(map(repr, spec.choices))}, got {v!r}")
    elif t == "tuple_int":
        if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray)):
            raise _Bad(f"must be {spec.nargs} integers, got {v!r}")
        if spec.nargs is not None and len(v) != spec.nargs:
            raise _Bad(f"must have {spec.nargs} values, got {len(v)}: {tuple(v)!r}")
        out = tuple(_to_int(x, "integers") for x in v)
        for x in out:
            _check_bounds(spec, x)
        return out
    elif t == "list_float":
        if isinstance(v, str):
            v = v.split()
            try:
                v = [float(x) for x in v]
            except ValueError:
                raise _Bad(f"must be numbers separated by spaces, got {' '.join(v)!r}") from None
        if not isinstance(v, (Sequence, np.ndarray)) or len(v) == 0:
            raise _Bad(f"must be a non-empty list of numbers, got {v!r}")
        return tuple(int(x) if _is_int(x) else _to_float(x) for x in v)
    elif t == "list_path":
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
    elif t == "keyword_count":
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
    elif t == "path":
        return _path(v)
    elif t == "array":
        if not _is_arraylike(v):
            raise _Bad(f"must be a 2-D array, got {type(v).__name__}")
        return v
    elif t == "noise":
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if not _is_arraylike(v):
            raise _Bad(f"must be None, True/False or a 2-D sigma array, got {type(v).__name__}")
        return v
    elif t == "table":
        if isinstance(v, str) or not (hasattr(v, "colnames") or hasattr(v, "columns")
                                      or isinstance(v, Mapping)
                                      or (isinstance(v, np.ndarray) and v.dtype.names)):
            raise _Bad(f"must be a table of objects (astropy Table), got {type(v).__name__}")
        return v
    elif t == "psf":
        if not (isinstance(v, Mapping) or (_is_arraylike(v) and not isinstance(v, str))):
            raise _Bad(f"must be a PSF dict or a 2-D PSF stamp, got {type(v).__name__}")
        return v
    elif t == "dict":
        if not isinstance(v, Mapping):
            raise _Bad(f"must be a dict, got {type(v).__name__}")
        return dict(v)
    elif t == "callable":
        if not callable(v):
            raise _Bad(f"must be callable, got {type(v).__name__}")
        return v
    elif t == "logger":
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if not callable(v):
            raise _Bad(f"must be True/False or a callable, got {type(v).__name__}")
        return v
    else:  # pragma: no cover - guarded by ParamSpec.__post_init__
        raise _Bad(f"unsupported type {t!r}")
    _check_bounds(spec, out)
    return out


# ---- validation -------------------------------------------------------------------------

def validate_hotpants_extra(extra) -> dict:
    """Check the ``extra`` dict of run_hotpants and return it cleaned.

    Keys are normalised (lower case, no leading dash); values are checked
    against :func:`hotpants_option_specs` (None means "not passed" for any
    option), and the cross-option rules of HOTPANTS are applied: rss >= r,
    sft and nft in [0, 1], tu > tl, iu > il, ``rf`` not with ``ssf``/``cmp``/
    ``rkw``, ``ng`` consistent with its N. Options the wrapper always sets
    (``wrapper='fixed'``, e.g. inim, outim, oni) are refused unless None.

    Raises
    ------
    ParamError
        Naming every bad option at once (as ``extra.<name>``).
    """
    cleaned, problems = _check_extra(extra)
    if problems:
        raise ParamError("Invalid HOTPANTS options in 'extra'", problems)
    return cleaned


def _check_extra(extra):
    problems, out = {}, {}
    if extra is None:
        return None, problems
    if not isinstance(extra, Mapping):
        return None, {"extra": f"must be a dict of HOTPANTS options, got {type(extra).__name__}"}
    for key, value in extra.items():
        name = _option_key(key)
        field = f"extra.{name}"
        spec = _OPTIONS.get(name)
        if spec is None:
            problems[field] = f"unknown HOTPANTS option{_suggest(name, _OPTIONS)}"
        elif name in out:
            problems[field] = f"given twice (as {key!r} and another spelling)"
        elif value is None:
            out[name] = None
        elif spec.wrapper == FIXED:
            problems[field] = ("set by run_hotpants itself; use the method's own parameters "
                               "(mask, err, get_*) instead")
        else:
            try:
                out[name] = _check(spec, value)
            except _Bad as exc:
                problems[field] = str(exc)
    _extra_rules(out, problems)
    return out, problems


def _extra_rules(x, problems):
    def given(*names):
        return all(x.get(n) is not None and f"extra.{n}" not in problems for n in names)

    if given("ng"):
        try:
            x["ng"] = _clean_ng(x["ng"])
        except _Bad as exc:
            problems["extra.ng"] = str(exc)
    if given("r", "rss") and x["rss"] < x["r"]:
        problems["extra.rss"] = f"must be >= r ({x['r']}), got {x['rss']} (HOTPANTS stops)"
    for p in "ti":
        if given(p + "u", p + "l") and not x[p + "u"] > x[p + "l"]:
            problems[f"extra.{p}u"] = f"must be > {p}l ({x[p + 'l']}), got {x[p + 'u']}"
        if given(p + "uk", p + "l") and not x[p + "uk"] > x[p + "l"]:
            problems[f"extra.{p}uk"] = f"must be > {p}l ({x[p + 'l']}), got {x[p + 'uk']}"
    if given("rf"):
        clash = [n for n in ("ssf", "cmp", "rkw") if given(n)]
        if clash:
            problems["extra.rf"] = f"cannot be combined with {', '.join(clash)}"
    if given("gd"):
        x0, x1, y0, y1 = x["gd"]
        if (x1 and x1 <= x0) or (y1 and y1 <= y0):
            problems["extra.gd"] = f"needs x0 < x1 and y0 < y1 (0 = unset), got {x['gd']}"


def _clean_ng(ng):
    n = ng[0]
    if not (_is_int(n) or float(n).is_integer()) or n < 1:
        raise _Bad(f"first value N (number of Gaussians) must be an integer >= 1, got {n!r}")
    n = int(n)
    if len(ng) != 1 + 2 * n:
        raise _Bad(f"N = {n} needs {1 + 2 * n} values (N d1 s1 ... dN sN), got {len(ng)}")
    out = [n]
    for k in range(n):
        d, s = ng[1 + 2 * k], ng[2 + 2 * k]
        if not float(d).is_integer() or d < 0:
            raise _Bad(f"degree d{k + 1} must be an integer >= 0, got {d!r}")
        if not s > 0:
            raise _Bad(f"sigma s{k + 1} must be > 0, got {s!r}")
        out += [int(d), float(s)]
    return tuple(out)


def _rules_hotpants(v, problems, ok):
    extra = {}
    if ok("extra"):
        cleaned, extra_problems = _check_extra(v["extra"])
        problems.update(extra_problems)
        extra = cleaned or {}
        if not extra_problems:
            v["extra"] = cleaned
        if extra.get("rf") is not None and "extra.rf" not in problems and ok("obj") \
                and v.get("obj") is not None:
            problems["extra.rf"] = ("cannot be combined with obj (stamps from objects are "
                                    "passed as -ssf)")
    if ok("rel_r", "rel_rss") and v["rel_rss"] < v["rel_r"]:
        # Explicit r and rss in extra make rel_r/rel_rss irrelevant.
        if extra.get("r") is None or extra.get("rss") is None:
            problems["rel_rss"] = (f"must be >= rel_r ({v['rel_r']}), got {v['rel_rss']}: "
                                   "HOTPANTS needs rss >= r")


def _rules_zogy(v, problems, ok):
    if ok("psf_options") and v.get("psf_options"):
        for key in v["psf_options"]:
            if not isinstance(key, str) or not key.isidentifier():
                problems[f"psf_options.{key}"] = "keys must be keyword names"
            elif key in _BY_NAME["zogy"]:
                problems[f"psf_options.{key}"] = "is a run_zogy parameter, not a PSF option"


def _rules_sfft(v, problems, ok):
    if ok("kernel_shape") and any(k % 2 == 0 for k in v["kernel_shape"]):
        problems["kernel_shape"] = f"both sizes must be odd, got {v['kernel_shape']}"
    if ok("flux_poly_order", "kernel_poly_order") and \
            v["flux_poly_order"] > v["kernel_poly_order"]:
        problems["flux_poly_order"] = (f"must be <= kernel_poly_order "
                                       f"({v['kernel_poly_order']}), got {v['flux_poly_order']}")


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
        raise _Bad(f"only none/true/false can be given as text, got {text!r}")
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

    Drops image/template and parameters not in the signature; ZOGY's
    ``psf_options`` are spread into the keywords (its ``**kwargs``).
    """
    m = _method(method)
    specs = _BY_NAME[m]
    out = {k: v for k, v in values.items()
           if k in specs and specs[k].in_signature and not specs[k].required}
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


def hotpants_argv(options) -> list:
    """Command-line arguments for a dict of HOTPANTS options.

    Any option may be given, including the ones run_hotpants sets itself
    (inim, outim, ...); each value is checked against its spec, but the
    cross-option rules are :func:`validate_hotpants_extra`'s job. None and
    False values are skipped; switches give ``-flag``; lists are spread
    (``-ng 3 6 0.7 ...``); ``pca`` gets its count first; ``rkw`` gives
    ``-rkw KEY n``.

    Raises
    ------
    ParamError
        Naming every unknown or invalid option.
    """
    argv, problems = [], {}
    for key, value in (options or {}).items():
        name = _option_key(key)
        spec = _OPTIONS.get(name)
        if spec is None:
            problems[f"extra.{name}"] = f"unknown HOTPANTS option{_suggest(name, _OPTIONS)}"
            continue
        if value is None or value is False:
            continue
        try:
            value = _check(spec, value)
            if name == "ng":
                value = _clean_ng(value)
        except _Bad as exc:
            problems[f"extra.{name}"] = str(exc)
            continue
        argv.append("-" + spec.flag)
        if spec.type == "bool":
            continue
        if spec.type == "list_path":
            argv.append(str(len(value)))
        items = value if isinstance(value, tuple) else (value,)
        argv.extend(repr(x) if isinstance(x, float) else str(x) for x in items)
    if problems:
        raise ParamError("Invalid HOTPANTS options", problems)
    return argv
