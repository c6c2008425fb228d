"""HOTPANTS options as the native backend reads them: defaults, checks, and the
options it cannot honour or ignores."""

from __future__ import annotations

from diffgui.engine.errors import InputError

#: HOTPANTS options the native backend cannot honour (executable only).
NATIVE_UNSUPPORTED = ("pca", "ki", "rf", "rkw")

#: Options the native backend ignores: output formats that mean nothing for
#: arrays, and refinements of the executable it does not reproduce (kcs: the
#: kernel varies per pixel here; fom: the merit is always the variance one).
NATIVE_IGNORED = ("sht", "obs", "obz", "nsht", "nbs", "nbz", "nc", "v", "ef", "sum", "kcs",
                  "mins", "okn", "sconv", "fom", "convvar", "gd")



def _hotpants_defaults() -> dict:
    from diffgui.engine import params

    return {s.name: s.default for s in params.hotpants_option_specs()}


def _resolve_options(options) -> dict:
    opts = _hotpants_defaults()
    for key, value in (options or {}).items():
        name = str(key).strip().lstrip("-").lower()
        if value is not None:
            opts[name] = value
    for name in NATIVE_UNSUPPORTED:
        if opts.get(name) not in (None, False):
            raise InputError(f"HOTPANTS option '{name}' is not supported by the native backend: "
                             "use backend='exe' with the HOTPANTS executable.")
    for name in ("ssf", "cmp"):
        if opts.get(name):
            raise InputError(f"option '{name}' (a file) is read by run_hotpants; pass the "
                             "positions to the native backend as stamp_xy.")
    for p in "ti":
        if opts.get(p + "uk") is None:
            opts[p + "uk"] = opts[p + "u"]
    if int(opts["rss"]) < int(opts["r"]):
        raise InputError(f"rss ({opts['rss']}) must be >= r ({opts['r']}).")
    if not opts[("tu")] > opts["tl"] or not opts["iu"] > opts["il"]:
        raise InputError("upper thresholds tu/iu must be above the lower ones tl/il.")
    return opts

