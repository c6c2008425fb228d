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


def _add_param_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", metavar="P.toml", help="preset file saved from the window (or by --save-preset)")
    p.add_argument("--method", metavar="NAME", help="hotpants, zogy or sfft (when no preset is given)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="PARAM=VALUE",
                   help="set one parameter (repeatable); HOTPANTS options as extra.NAME=VALUE")
    p.add_argument("--save-preset", metavar="P.toml", help="write the preset these options make")
    p.add_argument("--threshold", type=float, default=5.0, help="candidate threshold in sigma (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no engine log lines on stderr")


def configure_run(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffgui run``."""
    parser.description = ("Apply a preset (or --method/--set) to one science/template pair without a window "
                          "and write the results as multi-extension FITS.")
    parser.add_argument("science", nargs="?", metavar="SCI", help="science image (FITS; [N] or [EXTNAME] picks an HDU)")
    parser.add_argument("template", nargs="?", metavar="TMPL", help="template image")
    parser.add_argument("-o", "--output", metavar="OUT.fits", help="results file (multi-extension FITS)")
    parser.add_argument("--candidates", metavar="FILE.csv", help="also find candidates and write them as CSV")
    parser.add_argument("--regions", metavar="FILE.reg", help="also write the candidates as a DS9 region file")
    _add_param_options(parser)
    parser.set_defaults(func=_cmd_run)


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
        for path in (args.output, args.candidates, args.regions):
            if path and os.path.exists(path) and not args.overwrite:
                raise InputError(f"{path} already exists; use --overwrite to replace it")
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
        pair = load_pair(args.science, args.template)
    except (InputError, OSError) as exc:
        _err(str(exc))
        return 2
    ny, nx = pair.shape
    run = Run(method=preset.method, params=dict(preset.params))
    _err(f"running {run.label} on {nx} x {ny} pixels (preset hash {preset.hash})")
    log = None if args.quiet else (lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    try:
        run.execute(pair, verbose=log)
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
    return 0


def configure_batch(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffgui batch``."""
    parser.description = ("Apply a preset to many pairs: a pair list, or one template against many science "
                          "images; on local processes or a Dask cluster.")
    parser.add_argument("science", nargs="*", metavar="SCI", help="science images (with --template)")
    parser.add_argument("--template", metavar="TMPL", help="template used for every science image")
    parser.add_argument("--pairs", metavar="LIST", help="text file: SCIENCE TEMPLATE [OUTPUT] per line")
    parser.add_argument("-o", "--output-dir", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument("--candidates", action="store_true", help="also write <name>-candidates.csv per pair")
    parser.add_argument("--backend", choices=("serial", "local", "dask"), default="local",
                        help="serial: this process; local: a process pool (default); dask: a Dask cluster")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default: usable cores)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: a local cluster)")
    _add_param_options(parser)
    parser.set_defaults(func=_cmd_batch)


def _cmd_batch(args) -> int:
    from diffgui.app import batch
    from diffgui.engine.errors import InputError

    try:
        preset = resolve_preset(args.preset, args.method, args.sets)
        if args.save_preset:
            from diffgui.app.presets import save_preset

            save_preset(args.save_preset, preset.method, preset.params, name=preset.name, overwrite=args.overwrite)
        if args.pairs:
            if args.science or args.template:
                raise InputError("give either --pairs LIST or --template TMPL SCI..., not both")
            pairs = batch.read_pair_list(args.pairs)
        elif args.template and args.science:
            pairs = [(s, args.template) for s in args.science]
        else:
            raise InputError("give --pairs LIST, or --template TMPL and science images")
        os.makedirs(args.output_dir, exist_ok=True)
        jobs = batch.plan_jobs(pairs, args.output_dir, candidates=args.candidates)
    except (InputError, OSError, ValueError) as exc:
        _err(str(exc))
        return 2
    backend = "dask" if args.scheduler else args.backend
    _err(f"{len(jobs)} pairs, method {preset.method}, preset hash {preset.hash}, backend {backend}")

    def progress(done, total, res):
        tail = f" ({res.n_candidates} candidates)" if res.n_candidates is not None else ""
        msg = f"[{done}/{total}] {os.path.basename(res.job.science)}: {res.status} in {res.seconds:.1f} s{tail}"
        _err(msg + (f": {res.error}" if res.error else ""))

    try:
        results = batch.run_batch(jobs, preset.method, preset.params, backend=backend, workers=args.workers,
                                  scheduler=args.scheduler, threshold=args.threshold, overwrite=args.overwrite,
                                  preset_hash=preset.hash, progress=progress)
    except InputError as exc:
        _err(str(exc))
        return 2
    failed = [r for r in results if r.status != "done"]
    _err(f"{len(results) - len(failed)} done, {len(failed)} failed")
    return 1 if failed else 0
