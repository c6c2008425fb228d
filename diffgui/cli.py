"""The ``diffgui`` command: opens the window, or runs a headless subcommand.

Usage::

    diffgui [--demo | SCI TMPL] [--method NAME] [--run] [--screenshot FILE]
    diffgui methods                 # list methods and whether they can run here
    diffgui SUBCOMMAND --help

argparse cannot mix optional subcommands with positional file names (``diffgui
a.fits b.fits`` would be read as subcommand ``a.fits``), so :func:`main`
dispatches on the first argument: a registered subcommand name goes to the
subcommand parser, anything else to the window's parser.

Adding a subcommand: write ``configure(parser)`` that adds arguments to an
``argparse.ArgumentParser`` and calls ``parser.set_defaults(func=handler)``
with ``handler(args) -> int``, then register it in :data:`SUBCOMMANDS` as
``"name": ("module:configure", "one-line help")``. The module is imported only
when that subcommand is used, so headless subcommands never import Qt.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import diffgui

__all__ = ["main", "SUBCOMMANDS", "build_gui_parser", "no_display_problem"]

#: Headless subcommands: name -> ("module:configure", help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "methods": ("diffgui.cli:configure_methods", "list the subtraction methods and whether they can run here"),
    "run": ("diffgui.cli_run:configure_run", "apply a preset to one pair without a window and write the results"),
    "batch": ("diffgui.cli_run:configure_batch", "apply a preset to many pairs (local processes or a Dask cluster)"),
    "tune": ("diffgui.cli_tune:configure_tune", "search a method's settings on one pair and save the best as a preset"),
    "lightcurve": ("diffgui.cli_lightcurve:configure_lightcurve",
                   "forced PSF photometry at one position over a batch's differences (ECSV)"),
}


def configure_methods(parser: argparse.ArgumentParser) -> None:
    """``diffgui methods``: print each method, available or not, with the reason."""
    def handler(args) -> int:
        from diffgui.app import methods

        for info in methods.all_methods():
            ok, reason = info.availability()
            print(f"{info.name:10s} {'available' if ok else 'unavailable'}{'' if ok else ': ' + reason}")
        return 0

    parser.set_defaults(func=handler)


def _epilog() -> str:
    lines = ["subcommands (diffgui SUBCOMMAND --help for their options):"]
    lines += [f"  {name:12s} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "examples:", "  diffgui --demo --method zogy --run",
              "  diffgui sci.fits tmpl.fits.fz[1] --method sfft --run --screenshot out.png"]
    return "\n".join(lines)


def build_gui_parser() -> argparse.ArgumentParser:
    """Parser of ``diffgui [--demo | SCI TMPL] ...`` (the window)."""
    p = argparse.ArgumentParser(
        prog="diffgui", description="Astronomical image subtraction (HOTPANTS, ZOGY, SFFT): the desktop application.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"diffgui {diffgui.__version__}")
    p.add_argument("files", nargs="*", metavar="SCI TMPL",
                   help="science image and template (FITS or .fits.fz; append [N] or [EXTNAME] to pick an HDU)")
    p.add_argument("--demo", action="store_true", help="open the built-in simulated pair (works offline)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the demo pair (default 1)")
    p.add_argument("--method", metavar="NAME", help="subtraction method to select (hotpants, zogy, sfft)")
    p.add_argument("--run", action="store_true", help="run the method as soon as the pair is open")
    p.add_argument("--screenshot", metavar="FILE",
                   help="write a PNG of the window (after the run when --run is given) and exit")
    p.add_argument("--blink", action="store_true", help="start in the blink view")
    p.add_argument("--size", metavar="WxH", default=None, help="window size for screenshots, e.g. 1600x1000")
    p.add_argument("--install-desktop", action="store_true",
                   help="install the menu entry, icon and FITS file type for this user ($XDG_DATA_HOME) and exit")
    p.add_argument("--uninstall-desktop", action="store_true", help="remove what --install-desktop installed and exit")
    return p


def _run_subcommand(argv: list) -> int:
    name = argv[0]
    target, help_ = SUBCOMMANDS[name]
    mod_name, _, func = target.partition(":")
    configure = getattr(importlib.import_module(mod_name), func)
    parser = argparse.ArgumentParser(prog=f"diffgui {name}", description=help_)
    configure(parser)
    args = parser.parse_args(argv[1:])
    from diffgui.app.signals import exit_code, stop_message, stop_signals_raise

    with stop_signals_raise():  # SIGTERM runs the same clean-up as Ctrl-C
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt as exc:
            print(stop_message(exc), file=sys.stderr, flush=True)
            return exit_code(exc)


def main(argv=None) -> int:
    """Entry point of the ``diffgui`` command; returns the exit status."""
    if argv is None:  # a frozen diffgui is also the executable of its own child processes
        from diffgui.app.frozen import run_child_command

        run_child_command(sys.argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _run_subcommand(argv)
    parser = build_gui_parser()
    args = parser.parse_args(argv)
    if args.install_desktop or args.uninstall_desktop:
        from diffgui.app import desktop

        try:
            if args.uninstall_desktop:
                desktop.uninstall_desktop()
            else:
                desktop.install_desktop()
                print(f"menu entry runs: {desktop.shell_command()}")
        except (OSError, ValueError) as exc:
            print(f"diffgui: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.demo and args.files:
        parser.error("give either --demo or SCI TMPL, not both")
    if len(args.files) not in (0, 2):
        hint = f" ({args.files[0]!r} is not a subcommand either)" if len(args.files) == 1 else ""
        parser.error(f"expected two files, SCI and TMPL, got {len(args.files)}{hint}")
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
            args.size = (w, h)
        except ValueError:
            parser.error(f"--size must look like 1600x1000, got {args.size!r}")
    if args.method:
        from diffgui.app import methods

        try:
            info = methods.get(args.method)
        except ValueError as exc:
            parser.error(str(exc))
        ok, reason = info.availability()
        if not ok:
            parser.error(f"method {info.label} cannot run here: {reason}")
    problem = no_display_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from diffgui.gui.app import run_app

    return run_app(args)


def no_display_problem(environ=None) -> str:
    """A message naming the ways out when the window cannot be shown, else ``''``.

    On Linux and the BSDs a window needs an X11 or Wayland display, or an explicit Qt
    platform (``QT_QPA_PLATFORM=offscreen`` for scripted screenshots). Without any of
    them Qt would abort with a message about xcb plugins that does not say what to do.
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return ""
    if any(env.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")):
        return ""
    return ("diffgui: no display to open the window on (neither DISPLAY nor WAYLAND_DISPLAY is set).\n"
            "Either run it without a display, writing the window to a PNG:\n"
            "    QT_QPA_PLATFORM=offscreen diffgui --demo --run --screenshot window.png\n"
            "or start it where a display is available (a desktop session, ssh -X, or Xvfb:\n"
            "    xvfb-run -a diffgui --demo).\n"
            "Headless subcommands need no display: diffgui run --help, diffgui batch --help.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
