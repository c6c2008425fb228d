"""Headless subcommands ``diffgui run`` and ``diffgui batch`` (no Qt).

``diffgui run --preset P.toml SCI.fits TMPL.fits -o OUT.fits [--candidates FILE.csv]``
applies a preset saved from the window and writes the same results the window
would (the same :class:`~diffgui.app.run.Run` code path). Without a preset,
``--method NAME`` and repeated ``--set PARAM=VALUE`` choose the method and the
parameters; ``--set`` also overrides single values of a preset, and
``--save-preset P.toml`` writes the preset the options make. Progress goes to
stderr; stdout stays free for pipelines.

Exit status: 0 success, 1 the subtraction failed, 2 bad input (files, preset,
parameters).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["configure_run", "configure_batch", "resolve_preset"]


def _err(msg: str) -> None:
    print(f"diffgui: {msg}", file=sys.stderr, flush=True)


def _parse_sets(items) -> dict:
    from diffgui.engine.errors import InputError

    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set needs PARAM=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


def resolve_preset(preset_path=None, method=None, sets=None):
    """The :class:`~diffgui.app.presets.Preset` given by ``--preset``/``--method``/``--set``.

    Raises
    ------
    InputError
        (ParamError, PresetError) naming every bad field.
    """
    from diffgui.app import presets
    from diffgui.engine import params as P
    from diffgui.engine.errors import InputError

    texts = _parse_sets(sets)
    if preset_path:
        base = presets.load_preset(preset_path)
        if method and method.lower() != base.method:
            raise InputError(f"--method {method} contradicts the preset {preset_path}, "
                             f"which is for {P.METHOD_TITLES[base.method]}; drop one of them.")
        m, values, name = base.method, presets.persistable(base.method, base.params), base.name
    elif method:
        m, values, name = P._method(method), {}, ""
    else:
        raise InputError("give --preset FILE or --method NAME")
    if texts:
        values = P.merge_values(values, P.coerce_texts(m, texts))
    return presets.make_preset(m, values, name=name)


class _MemoryLimit(argparse.Action):
    """``--memory-limit``: checked at once, then handed to every run (this process, and
    the local batch workers it starts) through ``$DIFFGUI_MEMORY_LIMIT``."""

    def __call__(self, parser, namespace, values, option_string=None):
        from diffgui.engine.common.resources import ENV_VAR, parse_memory_limit
        from diffgui.engine.errors import InputError

        try:
            parse_memory_limit(values, name="--memory-limit")
        except InputError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        os.environ[ENV_VAR] = str(values)
        setattr(namespace, self.dest, values)


def _add_param_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", metavar="P.toml", help="preset file saved from the window (or by --save-preset)")
    p.add_argument("--method", metavar="NAME", help="hotpants, zogy or sfft (when no preset is given)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PARAM=VALUE",
                   help="set one parameter (repeatable); HOTPANTS options as extra.NAME=VALUE")
    p.add_argument("--save-preset", metavar="P.toml", help="write the preset these options make")
    p.add_argument("--threshold", type=float, default=5.0, help="candidate threshold in sigma (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no engine log lines on stderr")
    p.add_argument("--memory-limit", action=_MemoryLimit, metavar="SIZE",
                   help="refuse runs whose estimated peak memory is above SIZE (8G, 512M, 50%%, off; "
                        "default 75%% of the available memory or $DIFFGUI_MEMORY_LIMIT)")


def configure_run(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffgui run``."""
    parser.description = ("Apply a preset (or --method/--set) to one science/template pair without a window "
                          "and write the results as multi-extension FITS.")
    parser.add_argument("science", nargs="?", metavar="SCI", help="science image (FITS; [N] or [EXTNAME] picks an HDU)")
    parser.add_argument("template", nargs="?", metavar="TMPL", help="template image")
    parser.add_argument("-o", "--output", metavar="OUT.fits", help="results file (multi-extension FITS)")
    parser.add_argument("--candidates", metavar="FILE.csv", help="also find candidates and write them as CSV")
    parser.add_argument("--regions", metavar="FILE.reg", help="also write the candidates as a DS9 region file")
    parser.add_argument("--align", action="store_const", const="similarity", default=None,
                        help="register the science image onto the template grid first (star matching, Lanczos-3)")
    parser.add_argument("--align-model", dest="align", choices=("shift", "similarity", "affine"),
                        help="--align with this transform model (default similarity)")
    parser.add_argument("--json", action="store_true",
                        help="print the run (parameters, timings, quality scorecard) as JSON on stdout")
    add_map_options(parser)
    _add_param_options(parser)
    parser.set_defaults(func=_cmd_run)


def add_map_options(parser: argparse.ArgumentParser) -> None:
    """``--err``, ``--template-err``, ``--mask``, ``--template-mask``: maps as FITS files."""
    for flag, what in (("--err", "science noise (sigma) map"), ("--template-err", "template noise (sigma) map"),
                       ("--mask", "science mask (non-zero = bad)"), ("--template-mask", "template mask")):
        parser.add_argument(flag, metavar="F.fits", default=None,
                            help=f"{what} as a FITS file ([N] or [EXTNAME] picks an HDU)")


def map_files(args) -> dict:
    """The ``load_pair`` keywords of the map options that were given."""
    return {k: getattr(args, k, None) for k in ("err", "template_err", "mask", "template_mask")
            if getattr(args, k, None)}


def _cmd_run(args) -> int:
    from diffgui.app import methods
    from diffgui.engine.errors import InputError

    try:
        preset = resolve_preset(args.preset, args.method, args.sets)
        if args.save_preset:
            from diffgui.app.presets import save_preset

            save_preset(args.save_preset, preset.method, preset.params, name=preset.name,
                        overwrite=args.overwrite)
            _err(f"preset written to {args.save_preset} (hash {preset.hash})")
        if not (args.science or args.template or args.output):
            if args.save_preset:
                return 0
            raise InputError("give SCI TMPL -o OUT.fits (or only --save-preset to write a preset)")
        if not (args.science and args.template):
            raise InputError("give both the science image and the template")
        if not args.output:
            raise InputError("give the results file with -o OUT.fits")
        if not (args.threshold > 0 and args.threshold < float("inf")):
            raise InputError(f"--threshold must be a positive number of sigma, got {args.threshold}")
        from diffgui.app.atomic import check_output

        taken = [args.science, args.template, args.preset]  # never written over, even with --overwrite
        for path in (args.output, args.candidates, args.regions):
            if path:
                check_output(path, inputs=taken, overwrite=args.overwrite)
                taken.append(path)
        info = methods.get(preset.method)
        ok, reason = info.availability()
        if not ok and info.func is None:
            raise InputError(f"{info.label} cannot run here: {reason}")
    except (InputError, FileExistsError, ValueError) as exc:
        _err(str(exc))
        return 2
    return _execute(args, preset)


def _execute(args, preset) -> int:
    from diffgui.app.pair import load_pair
    from diffgui.app.results_io import save_run
    from diffgui.app.run import Run, describe_error
    from diffgui.engine.errors import InputError

    t0 = time.perf_counter()
    try:
        _err(f"loading {args.science} and {args.template}")
        pair = load_pair(args.science, args.template, **map_files(args))
        if getattr(args, "align", None):  # issue 15: register the science image onto the template grid
            from diffgui.app.align import align_pair, check_model

            from diffgui.engine.errors import FitError

            try:
                pair, transform = align_pair(pair, model=check_model(args.align))
            except FitError as exc:
                raise InputError(f"cannot align the pair: {exc}") from None
            pair.truth["registration"] = transform.to_dict()
            _err(f"aligned: shift ({transform.offset[0]:.3f}, {transform.offset[1]:.3f}) px, "
                 f"{transform.n_stars} stars, rms {transform.rms:.3f} px")
    except (InputError, OSError) as exc:
        _err(str(exc))
        return 2
    ny, nx = pair.shape
    try:  # room for about a dozen float32 planes, before spending the time
        from diffgui.app.atomic import check_output

        check_output(args.output, overwrite=args.overwrite, need_bytes=12 * 4 * nx * ny + 2**20)
    except InputError as exc:
        _err(str(exc))
        return 2
    run = Run(method=preset.method, params=dict(preset.params))
    _err(f"running {run.label} on {nx} x {ny} pixels (preset hash {preset.hash})")
    log = None if args.quiet else (lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    try:
        run.execute(pair, verbose=log)
        if "registration" in pair.truth:  # --align: the transform goes into the provenance
            run.provenance["registration"] = pair.truth["registration"]
    except Exception as exc:
        _err(f"{run.label} failed: {describe_error(exc)}")
        return 2 if isinstance(exc, InputError) else 1
    _err(f"{run.label} done in {run.timings.get('total', 0.0):.2f} s")
    try:
        save_run(run, args.output, header=pair.image_header, overwrite=args.overwrite)
        _err(f"results written to {args.output}")
        if args.candidates or args.regions:
            from diffgui.app.candidates import candidates_for_run, export_csv, export_regions

            cset = candidates_for_run(run, pair, threshold=args.threshold)
            cset.meta["preset_hash"] = preset.hash
            if args.candidates:
                export_csv(args.candidates, cset, preset_hash=preset.hash, overwrite=args.overwrite)
                _err(f"{len(cset)} candidates written to {args.candidates}")
            if args.regions:
                export_regions(args.regions, cset, overwrite=args.overwrite)
                _err(f"{len(cset)} regions written to {args.regions}")
    except (InputError, OSError) as exc:
        _err(str(exc))
        return 2
    _err(f"finished in {time.perf_counter() - t0:.2f} s")
    if getattr(args, "json", False):
        print(run.to_json(indent=1))
    return 0


def configure_batch(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffgui batch`` (see :mod:`diffgui.cli_batch`)."""
    from diffgui.cli_batch import configure_batch as configure

    configure(parser)
