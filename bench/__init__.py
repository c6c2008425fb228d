"""diffgui speed and quality benchmarks.

Run ``python -m bench`` to list them, ``python -m bench NAME --help`` for the
options of one.  Quality and timing helpers live in :mod:`bench.metrics`.

Adding a benchmark
------------------
Create ``bench/bench_<name>.py``; it is imported automatically by
``python -m bench``.  Register a function that takes the parsed arguments and
returns a dict of results (numbers or strings, printed in order and written to
``--json``)::

    from bench import register

    def _args(parser):
        parser.add_argument("--size", type=int, default=1024)

    @register("zogy", help="ZOGY speed and quality on a simulated pair",
              arguments=_args)
    def run(args):
        ...
        return {"size": args.size, "time_s": t, "peak_rss_mb": m / 2**20}

Every benchmark also receives the common options ``--repeat`` (runs for a median
time, default 3), ``--seed`` and ``--json``.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["Benchmark", "BENCHMARKS", "register", "discover"]


@dataclass
class Benchmark:
    """One registered benchmark."""

    name: str
    func: Callable
    help: str = ""
    arguments: Optional[Callable] = None
    module: str = ""


#: Registered benchmarks by name.
BENCHMARKS: dict[str, Benchmark] = {}


def register(name, help="", arguments=None):
    """Decorator registering ``func(args) -> dict`` as benchmark ``name``.

    Parameters
    ----------
    name : str
        Sub-command name (``python -m bench NAME``).
    help : str
        One line shown by ``python -m bench``.
    arguments : callable, optional
        ``arguments(parser)`` adds the benchmark's own argparse options.
    """

    def deco(func):
        if name in BENCHMARKS and BENCHMARKS[name].func is not func:
            raise ValueError(f"benchmark {name!r} is registered twice "
                             f"({BENCHMARKS[name].module} and {func.__module__}).")
        BENCHMARKS[name] = Benchmark(name, func, help, arguments, func.__module__)
        return func

    return deco


def discover():
    """Import every ``bench/bench_*.py`` module so that it registers its benchmarks.

    Returns
    -------
    dict
        ``{module_name: error_text}`` for modules that failed to import (they are
        reported, not fatal, so one broken method does not hide the others).
    """
    failures = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("bench_"):
            try:
                importlib.import_module(f"{__name__}.{info.name}")
            except Exception:
                failures[info.name] = traceback.format_exc(limit=3)
    return failures
