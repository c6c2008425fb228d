"""``diffgui lightcurve BATCH_DIR --at X,Y -o LC.ecsv`` (no Qt).

Forced PSF photometry at one position on every results file of a batch folder; writes
an ECSV table with the columns ``time``, ``flux``, ``flux_err``, ``file`` and more (see
:mod:`diffgui.app.lightcurve`). Exit status: 0 written, 1 some files could not be
measured (the others are written), 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["configure_lightcurve"]


def _pair(text, what):
    from diffgui.engine.errors import InputError

    try:
        a, b = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"{what} must be two numbers separated by a comma, got {text!r}") from None
    return a, b


def configure_lightcurve(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffgui lightcurve``."""
    parser.description = ("Forced PSF photometry at one position on every difference of a batch folder; "
                          "writes the light curve as ECSV.")
    parser.add_argument("batch_dir", metavar="BATCH_DIR", help="folder written by diffgui batch")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--at", metavar="X,Y", help="position in the template's pixels (0-based)")
    where.add_argument("--at-radec", metavar="RA,DEC", help="position in degrees (needs a WCS in the results)")
    parser.add_argument("-o", "--output", required=True, metavar="LC.ecsv", help="light curve file (ECSV)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--workers", type=int, default=1, help="processes measuring in parallel (default 1)")
    parser.add_argument("--refine", action="store_true",
                        help="fit the source's position on the differences where it is significant (within 2 px) "
                             "and measure there (see docs/series.md)")
    parser.set_defaults(func=_cmd_lightcurve)


def _refined(lc, files, table, workers, err):
    from diffgui.app.lightcurve_position import refine_light_curve_position

    x0, y0 = float(table["x"][0]), float(table["y"][0])
    ref = refine_light_curve_position(files, x0, y0, table=table)
    if ref.n_frames == 0:
        err("--refine: no difference where the source is significant (|S/N| >= 20); position kept")
        return table
    err(f"--refine: position ({x0:.3f}, {y0:.3f}) -> ({ref.x:.3f}, {ref.y:.3f}) from {ref.n_frames} differences")
    new = lc.light_curve(files, ref.x, ref.y, workers=workers)
    new.meta["refined_from"] = {"x": x0, "y": y0, "n_frames": ref.n_frames}
    return new


def _cmd_lightcurve(args) -> int:
    from diffgui.app import lightcurve as lc
    from diffgui.engine.errors import InputError

    def err(msg):
        print(f"diffgui: {msg}", file=sys.stderr, flush=True)

    try:
        if os.path.exists(args.output) and not args.overwrite:
            raise InputError(f"{args.output} already exists; use --overwrite to replace it")
        x = y = ra = dec = None
        if args.at:
            x, y = _pair(args.at, "--at")
        else:
            ra, dec = _pair(args.at_radec, "--at-radec")
        files = lc.result_files(args.batch_dir)
        err(f"measuring {len(files)} differences at " + (f"({x:g}, {y:g}) px" if args.at else f"RA {ra} Dec {dec}"))
        table = lc.light_curve(files, x, y, ra=ra, dec=dec, workers=args.workers)
        if args.refine:
            table = _refined(lc, files, table, args.workers, err)
        lc.write_light_curve(table, args.output, overwrite=args.overwrite)
    except (InputError, OSError) as exc:
        err(str(exc))
        return 2
    failed = table.meta.get("failed") or []
    for f in failed:
        err(f"not measured: {f['file']}: {f['error']}")
    err(f"{len(table)} points written to {args.output}")
    return 1 if failed else 0
