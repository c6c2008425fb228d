"""Specs of the HOTPANTS 5.1.11 command-line options (``run_hotpants(extra=...)``),
their validation and the argument list built from them."""

from __future__ import annotations

from collections.abc import Mapping

from diffgui.engine.params.checking import _Bad, _check, _is_int, _option_key, _suggest
from diffgui.engine.params.spec import DERIVED, FIXED, ParamError, ParamSpec

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

_OPTIONS = {s.name: s for s in _HOTPANTS_OPTIONS}


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
