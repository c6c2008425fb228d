"""``diffgui batch``: one preset over many pairs (no Qt).

Progress goes to stderr as a bar (pairs done, failed, time left); at the end, and on
Ctrl-C or SIGTERM, a summary table is printed and written as
``<output dir>/batch-summary-<UTC time>.ecsv``. Worker processes die with the batch.

Exit status: 0 every pair done (or skipped by ``--resume``), 1 some pair failed,
2 bad input, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

__all__ = ["configure_batch"]


def configure_batch(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffgui batch``."""
    from diffgui.cli_run import _add_param_options

    parser.description = ("Apply a preset to many pairs: a pair list, or one template against many science "
                          "images; on local processes or a Dask cluster.")
    parser.add_argument("science", nargs="*", metavar="SCI", help="science images (with --template)")
    parser.add_argument("--template", metavar="TMPL", help="template used for every science image")
    parser.add_argument("--pairs", metavar="LIST",
                        help="text file: SCIENCE TEMPLATE [OUTPUT] per line; quote names with spaces or '#' "
                             "(\"my dir/sci #1.fits\"), or separate the fields with TABs")
    parser.add_argument("-o", "--output-dir", required=True, metavar="DIR", help="folder for the results")
    parser.add_argument("--candidates", action="store_true", help="also write <name>-candidates.csv per pair")
    parser.add_argument("--backend", choices=("serial", "local", "dask"), default="local",
                        help="serial: this process; local: a process pool (default); dask: a Dask cluster")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default 0: usable cores)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="Dask scheduler address, tcp://HOST:PORT (default: a local cluster)")
    parser.add_argument("--resume", action="store_true",
                        help="skip pairs whose output exists and is complete; redo incomplete ones")
    parser.add_argument("--align", action="store_const", const="similarity", default=None,
                        help="register the science image onto the template grid first (star matching, Lanczos-3)")
    parser.add_argument("--align-model", dest="align", choices=("shift", "similarity", "affine"),
                        help="--align with this transform model (default similarity)")
    from diffgui.cli_run import add_map_options

    add_map_options(parser)  # read by every job (the app's arguments module); --err/--mask: one pair only
    _add_param_options(parser)
    parser.set_defaults(func=_cmd_batch)


def _plan(args, batch, preset):
    from diffgui.app.batch_report import check_output_dir, estimate_output_bytes
    from diffgui.engine.errors import InputError

    if not (0 < args.threshold < float("inf")):
        raise InputError(f"--threshold must be a positive number of sigma, got {args.threshold}")
    if args.workers is not None and args.workers < 0:
        raise InputError(f"--workers must be 0 (all usable cores) or a positive number, got {args.workers}")
    if args.align:
        from diffgui.app.align import check_model

        args.align = check_model(args.align)
    if args.pairs:
        if args.science or args.template:
            raise InputError("give either --pairs LIST or --template TMPL SCI..., not both")
        pairs = batch.read_pair_list(args.pairs)
    elif args.template and args.science:
        pairs = [(s, args.template) for s in args.science]
    else:
        raise InputError("give --pairs LIST, or --template TMPL and science images")
    check_output_dir(args.output_dir, len(pairs), estimate_output_bytes(pairs[0][0]))
    if args.scheduler:
        from diffgui.app.batch_dask import check_scheduler

        check_scheduler(args.scheduler)
    return batch.plan_jobs(pairs, args.output_dir, candidates=args.candidates)


class _Terminated(KeyboardInterrupt):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


def _cmd_batch(args) -> int:
    from diffgui.app import batch
    from diffgui.app.batch_report import ProgressBar, format_summary, write_summary
    from diffgui.cli_run import _err, resolve_preset
    from diffgui.engine.errors import InputError

    try:
        preset = resolve_preset(args.preset, args.method, args.sets)
        if args.save_preset:
            from diffgui.app.presets import save_preset

            save_preset(args.save_preset, preset.method, preset.params, name=preset.name, overwrite=args.overwrite)
        jobs = _plan(args, batch, preset)
        from diffgui.cli_run import map_files

        maps = map_files(args)
        if (maps.get("err") or maps.get("mask")) and len(jobs) > 1:
            raise InputError("--err and --mask belong to one science image: give them for a single pair "
                             "(--template-err and --template-mask apply to every pair)")
    except (InputError, OSError, ValueError) as exc:
        _err(str(exc))
        return 2
    backend = "dask" if args.scheduler else args.backend
    _err(f"{len(jobs)} pairs, method {preset.method}, preset hash {preset.hash}, backend {backend}"
         + (f", aligned ({args.align})" if args.align else ""))
    bar = ProgressBar(len(jobs))
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    code = None
    try:
        results = batch.run_batch(jobs, preset.method, {**preset.params, **maps}, backend=backend,
                                  workers=args.workers,
                                  scheduler=args.scheduler, threshold=args.threshold, overwrite=args.overwrite,
                                  preset_hash=preset.hash, progress=lambda d, t, r: bar.update(r),
                                  resume=args.resume, align=args.align)
    except batch.BatchInterrupted as exc:
        results = exc.results
        code = 143 if _terminated(exc) else 130
    except InputError as exc:
        bar.close()
        _err(str(exc))
        return 2
    finally:
        signal.signal(signal.SIGTERM, old)
    bar.close()
    print(format_summary(results), file=sys.stderr, flush=True)
    try:
        path = write_summary(results, args.output_dir)
        _err(f"summary written to {path}")
    except OSError as exc:
        _err(f"cannot write the summary: {exc}")
    if code is not None:
        _err("interrupted: pairs marked 'cancelled' were not finished (run again with --resume)")
        return code
    failed = [r for r in results if r.status not in ("done", "skipped")]
    return 1 if failed else 0


def _terminated(exc) -> bool:
    seen = exc
    while seen is not None:
        if isinstance(seen, _Terminated):
            return True
        seen = seen.__context__
    return False


if __name__ == "__main__":  # pragma: no cover
    from diffgui.cli import main

    sys.exit(main(["batch", *sys.argv[1:]]))
