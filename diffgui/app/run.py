"""One subtraction run: method, parameters, results, timings, log and provenance.

A :class:`Run` is created with a method name and parameter values, executed on
a :class:`~diffgui.app.pair.Pair` (in the GUI from a worker thread), and then
holds the named result arrays. Everything except the arrays serialises to a
JSON-compatible dict (:meth:`Run.to_dict`), which is what presets, batch runs
and the results file header store.
"""

from __future__ import annotations

import getpass
import itertools
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

import numpy as np

from diffgui.engine.errors import Cancelled

from diffgui.engine.common.alignment import check_alignment

from . import methods as _methods
from .arguments import method_arguments

__all__ = ["Run", "jsonable", "provenance"]

_ids = itertools.count(1)

STATUSES = ("pending", "running", "done", "failed", "cancelled")


def jsonable(value):
    """Convert a parameter value to plain JSON types (tuples become lists, numpy scalars floats)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return f"<array {value.shape} {value.dtype}>"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def provenance() -> dict:
    """Versions and environment of this run (for the results header and presets)."""
    import astropy
    import scipy

    import diffgui

    info = {
        "diffgui": diffgui.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
        "astropy": astropy.__version__, "python": platform.python_version(), "host": platform.node(),
        "platform": platform.platform(terse=True),
    }
    try:
        info["user"] = getpass.getuser()
    except Exception:  # no login name in some containers
        info["user"] = ""
    return info


@dataclass
class Run:
    """A subtraction run and everything needed to reproduce or report it.

    Attributes
    ----------
    method : str
        Registry name (``'zogy'``, ``'sfft'``, ``'hotpants'``).
    params : dict
        Parameter values passed to the engine (JSON-compatible).
    results : dict
        Outputs by name (``'diff'``, ``'scorr'``, ``'noise'``, ``'kernel'`` ...).
    timings : dict
        Seconds per stage (``'total'`` at least once done).
    log : list of str
        Lines the engine logged through ``verbose``.
    provenance : dict
        Versions, host, user, start time, the pair's description.
    status : str
        One of ``pending, running, done, failed, cancelled``.
    error : str or None
        Readable message when failed.
    run_id : int
        Unique within the process; the GUI drops results of stale ids.
    check_alignment : bool
        Measure the pair's offset before running and refuse a misaligned pair
        (:func:`diffgui.engine.common.alignment.check_alignment`); default True.
    """

    method: str
    params: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    log: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    status: str = "pending"
    error: Optional[str] = None
    run_id: int = field(default_factory=lambda: next(_ids))
    quality: dict = field(default_factory=dict)  # scorecard values (diffgui.app.scoring)
    check_alignment: bool = field(default=True, repr=False)  # refuse misaligned pairs before running
    scorecard: Optional[object] = field(default=None, repr=False, compare=False)

    @property
    def info(self) -> _methods.MethodInfo:
        return _methods.get(self.method)

    @property
    def label(self) -> str:
        try:
            return self.info.label
        except Exception:
            return self.method

    def execute(self, pair, *, verbose: Optional[Callable[[str], None]] = None,
                cancel: Optional[Callable[[], bool]] = None, score: bool = True) -> "Run":
        """Run the method on ``pair``; fills results, timings, log and status.

        Exceptions propagate (after ``status``/``error`` are set), so callers
        decide how to show them; :class:`~diffgui.engine.errors.Cancelled`
        sets ``status='cancelled'``.
        """
        def log(line):
            line = str(line)
            self.log.append(line)
            if verbose is not None:
                verbose(line)

        # the engine's log.progress(stage, fraction) reaches verbose.progress, if it has one
        log.progress = getattr(verbose, "progress", None) or (lambda stage, fraction: None)

        self.provenance = {**provenance(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "pair": pair.describe(), "method": self.method}
        self.status = "running"
        t0 = time.perf_counter()
        try:
            inputs = pair.engine_inputs()
            args = method_arguments(self.method, self.params, pair.image_header, pair.template_header,
                                    shape=np.shape(inputs["image"]))
            for name, value in args.from_headers.items():
                log(f"{name} = {value:g} from the FITS header")
            self.provenance["from_headers"] = args.from_headers
            self.provenance["noise"] = args.noise
            if args.maps:  # maps named as files in the parameters replace the pair's
                inputs.update({k: (v != 0 if "mask" in k else v) for k, v in args.maps.items()})
                self.provenance["pair"].update({f"{k}_path": v for k, v in args.map_files.items()})
            if self.check_alignment:  # the offset goes to the provenance, not the engine's log
                off = check_alignment(inputs["image"], inputs["template"], inputs.get("mask"),
                                      inputs.get("template_mask"))
                self.provenance["alignment"] = {"dx": round(off.dx, 3), "dy": round(off.dy, 3),
                                                "rotation": round(off.rotation, 4),
                                                "peak": round(off.peak, 3), "measured": off.reliable,
                                                "method": off.method, "n_stars": off.n_stars,
                                                "error": [round(e, 3) for e in off.error]}
            self.results = self.info.call(inputs, args.params, verbose=log, cancel=cancel)
        except Cancelled as exc:
            self.status, self.error = "cancelled", str(exc) or "cancelled"
            raise
        except BaseException as exc:
            self.status, self.error = "failed", describe_error(exc)
            raise
        finally:
            self.timings["total"] = time.perf_counter() - t0
        self.status = "done"
        if score:  # not logged: the log is the engine's
            self.score(pair)
        return self

    def score(self, pair, log: Optional[Callable[[str], None]] = None) -> dict:
        """Compute the quality scorecard of the results (``self.scorecard``, ``self.quality``)."""
        from .scoring import score_run

        self.quality = score_run(self, pair, log)
        return self.quality

    def arrays(self) -> dict:
        """The 2-D image results (``{'diff': ..., 'scorr': ...}``)."""
        return {k: v for k, v in self.results.items() if isinstance(v, np.ndarray) and v.ndim == 2}

    def to_dict(self) -> dict:
        """JSON-compatible description without the arrays."""
        return {"run_id": self.run_id, "method": self.method, "params": jsonable(self.params),
                "status": self.status, "error": self.error, "timings": jsonable(self.timings),
                "log": list(self.log), "provenance": jsonable(self.provenance),
                "outputs": sorted(self.results), "quality": jsonable(self.quality)}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: dict) -> "Run":
        """Rebuild a Run (without results) from :meth:`to_dict` output."""
        run = cls(method=d["method"], params=dict(d.get("params") or {}), timings=dict(d.get("timings") or {}),
                  log=list(d.get("log") or []), provenance=dict(d.get("provenance") or {}),
                  status=d.get("status", "pending"), error=d.get("error"),
                  quality=dict(d.get("quality") or {}))
        return run


def describe_error(exc: BaseException) -> str:
    """One readable line for an exception: the message, and the type when it adds anything."""
    msg = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, (ValueError, RuntimeError)) and exc.__class__.__module__.startswith("diffgui"):
        return msg
    if isinstance(exc, NotImplementedError):
        return f"not implemented: {msg}"
    return f"{exc.__class__.__name__}: {msg}"
