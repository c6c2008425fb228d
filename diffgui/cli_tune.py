"""``diffgui tune SCI TMPL --method M``: search a method's settings and save the best as a preset.

The table of what was tried goes to stdout (``--json``: the whole result as
JSON); progress lines to stderr. See :mod:`diffgui.app.tuning` for the search
space of each method.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["configure_tune"]


def _err(msg: str) -> None:
    print(f"diffgui: {msg}", file=sys.stderr, flush=True)


def configure_tune(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffgui tune``."""
    parser.description = ("Try the settings that matter for one method on one pair, score each run "
                          "(median and 95th percentile of |D/noise| at bright star peaks, ...) and "
                          "save the best as a preset.")
    parser.add_argument("science", metavar="SCI", help="science image (FITS; [N] or [EXTNAME] picks an HDU)")
    parser.add_argument("template", metavar="TMPL", help="template image")
    parser.add_argument("--method", metavar="NAME", help="hotpants, zogy or sfft (or from --preset)")
    parser.add_argument("--preset", metavar="P.toml", help="start from this preset's settings")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="PARAM=VALUE",
                        help="set one starting parameter (repeatable); HOTPANTS options as extra.NAME=VALUE")
    parser.add_argument("--budget", type=float, default=60.0, metavar="SECONDS",
                        help="time budget in seconds (default 60)")
    parser.add_argument("--regions", type=int, choices=(5, 9, 0), default=5,
                        help="score the trials on 5 regions (corners and centre), 9 (3 x 3 grid) or "
                             "0 (the whole frame); the winner is confirmed on the whole frame")
    parser.add_argument("--save-preset", metavar="P.toml", help="write the best settings as a preset")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing preset file")
    for opt in ("mask", "template-mask", "err", "template-err"):
        parser.add_argument(f"--{opt}", metavar="FILE", help=f"{opt.replace('-', ' ')} as a FITS file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.set_defaults(func=_cmd_tune)


def _result_dict(result) -> dict:
    from diffgui.app.run import jsonable
    from diffgui.app.tuning import describe_changes

    def trial(t):
        return {"stage": t.stage, "changes": describe_changes(t.changes), "params": jsonable(t.params),
                "quality": t.quality, "objective": None if t.objective == float("inf") else t.objective,
                "seconds": round(t.seconds, 3), "error": t.error}
    return {"method": result.method, "seconds": round(result.seconds, 2), "improved": result.improved,
            "stopped_by_budget": result.stopped_by_budget, "best": trial(result.best),
            "default": trial(result.default), "trials": [trial(t) for t in result.trials],
            "regions": None if result.sample is None else [list(r) for r in result.sample.regions],
            "as_user": None if result.as_user is None else [trial(t) for t in result.as_user]}


def _cmd_tune(args) -> int:
    from diffgui.app import presets
    from diffgui.app.pair import load_pair
    from diffgui.app.tuning import describe_changes, diff_params, format_table, tune
    from diffgui.cli_run import resolve_preset
    from diffgui.engine.errors import InputError

    try:
        preset = resolve_preset(args.preset, args.method, args.sets)
        if args.budget <= 0:
            raise InputError(f"--budget must be positive, got {args.budget}")
        pair = load_pair(args.science, args.template, mask=args.mask, template_mask=args.template_mask,
                         err=args.err, template_err=args.template_err)
    except (InputError, OSError, ValueError) as exc:
        _err(str(exc))
        return 2
    _err(f"tuning {preset.method} on {pair.name} within {args.budget:g} s")
    try:
        result = tune(pair, preset.method, dict(preset.params), budget=args.budget,
                      verbose=lambda line: _err(line), regions=args.regions)
    except InputError as exc:
        _err(str(exc))
        return 2
    if args.json:
        print(json.dumps(_result_dict(result), indent=1))
    else:
        print(format_table(result))
        best = (describe_changes(diff_params(result.base, result.best.params)) if result.improved
                else "the starting settings")
        print(f"best: {best}")
    if args.save_preset:
        try:
            params = {k: v for k, v in result.best.params.items() if k != "obj"}
            p = presets.save_preset(args.save_preset, preset.method, params, overwrite=args.overwrite,
                                    description=f"diffgui tune on {pair.name}")
        except (InputError, FileExistsError, OSError) as exc:
            _err(str(exc))
            return 2
        _err(f"preset written to {args.save_preset} (hash {p.hash})")
    return 0
