"""Batch helpers without Qt: output checks, progress bar, summary table, pair lists.

* :func:`output_complete` decides whether a results file written earlier is complete
  (``--resume``): the FITS file opens, every HDU's data is readable in full (a truncated
  file fails), and the ``DIFF`` and ``RUNINFO`` extensions are present.
* :func:`check_output_dir` is run before any work: the folder exists or can be created,
  is writable, and has room for the outputs.
* :class:`ProgressBar` draws ``[#####.....] 12/173 done 11 failed 1 ETA 1:23`` on stderr
  (tqdm is not a dependency).
* :func:`summary_table` / :func:`write_summary` make the end-of-batch table (ECSV).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
import warnings
from typing import Optional, Sequence

from diffgui.engine.errors import InputError

__all__ = ["output_complete", "check_output_dir", "ProgressBar", "summary_table", "write_summary",
           "format_summary", "split_pair_line"]

#: Extensions a complete results file must hold.
REQUIRED_EXTENSIONS = ("DIFF", "RUNINFO")


def output_complete(path, candidates: Optional[str] = None) -> bool:
    """True when ``path`` is a complete diffgui results file (and ``candidates`` exists)."""
    from astropy.io import fits

    if not path or not os.path.isfile(path):
        return False
    if candidates and not os.path.isfile(candidates):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # astropy warns on truncated data
            with fits.open(path, memmap=False) as hdul:
                names = {h.name for h in hdul}
                if not all(n in names for n in REQUIRED_EXTENSIONS):
                    return False
                for h in hdul:
                    _ = h.data
                expected = sum(h.filebytes() for h in hdul)
        return os.path.getsize(path) >= expected
    except Exception:
        return False


def check_output_dir(out_dir, n_pairs: int, bytes_per_pair: int = 0) -> str:
    """Create/check the output folder before any work.

    Raises
    ------
    InputError
        Not a folder, not writable, or less free space than ``n_pairs * bytes_per_pair``.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"output folder {out_dir} exists and is not a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out_dir} is not writable")
    need = int(n_pairs) * int(bytes_per_pair)
    free = shutil.disk_usage(out_dir).free
    if need > free:
        raise InputError(f"output folder {out_dir} has {free / 2**20:.0f} MB free but about "
                         f"{need / 2**20:.0f} MB are needed for {n_pairs} results")
    return out_dir


def estimate_output_bytes(science_path: str, extensions: int = 6) -> int:
    """Rough size of one results file: ``extensions`` float32 images of the science size."""
    from astropy.io import fits

    from .pair import split_hdu_spec

    path = split_hdu_spec(science_path)[0]
    try:
        with fits.open(path, memmap=False) as hdul:
            for h in hdul:
                if h.header.get("NAXIS", 0) == 2 or h.header.get("ZNAXIS", 0) == 2:
                    nx = h.header.get("ZNAXIS1", h.header.get("NAXIS1", 0))
                    ny = h.header.get("ZNAXIS2", h.header.get("NAXIS2", 0))
                    return int(nx) * int(ny) * 4 * extensions + 100_000
    except Exception:
        pass
    return 0


def split_pair_line(line: str) -> list:
    """Fields of one pair-list line.

    A line with a TAB is split on TABs only (names may then hold spaces and ``#``);
    otherwise fields are separated by spaces or commas, ``"double"`` or ``'single'``
    quotes keep spaces and ``#`` inside a name, and an unquoted ``#`` starts a comment.
    """
    if "\t" in line:
        if line.lstrip().startswith("#"):
            return []
        return [f.strip() for f in line.rstrip("\r\n").split("\t") if f.strip()]
    lex = shlex.shlex(line, posix=True)
    lex.whitespace += ","
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError as exc:
        raise InputError(f"{exc} in {line.strip()!r}") from None


def _hms(seconds: float) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line progress bar on a terminal stream: done, failed and time left.

    On a stream that is not a terminal it prints one line per finished pair instead.
    """

    def __init__(self, total: int, stream=None, width: int = 30, skipped: int = 0):
        self.total, self.width = int(total), int(width)
        self.stream = sys.stderr if stream is None else stream
        self.done = self.failed = 0
        self.skipped = int(skipped)
        self.t0 = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def eta(self) -> float:
        n = self.done + self.failed
        if n == 0:
            return float("nan")
        return (time.monotonic() - self.t0) / n * (self.total - self.skipped - n)

    def line(self) -> str:
        n = self.done + self.failed + self.skipped
        frac = n / self.total if self.total else 1.0
        fill = int(round(frac * self.width))
        return (f"[{'#' * fill}{'.' * (self.width - fill)}] {n}/{self.total} done {self.done + self.skipped} "
                f"failed {self.failed} left {_hms(self.eta())}")

    def update(self, result) -> None:
        if result.status in ("done",):
            self.done += 1
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
        if self.tty:
            self.stream.write("\r" + self.line())
        else:
            name = os.path.basename(result.job.science)
            tail = f": {result.error}" if result.error else ""
            n = self.done + self.failed + self.skipped
            self.stream.write(f"[{n}/{self.total}] {name}: {result.status} in {result.seconds:.1f} s{tail}  "
                              f"(done {self.done + self.skipped}, failed {self.failed}, left {_hms(self.eta())})\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def summary_table(results: Sequence):
    """Astropy Table, one row per pair: science, template, output, status, seconds, error."""
    from astropy.table import Table

    rows = [r for r in results if r is not None]
    t = Table({"science": [r.job.science for r in rows], "template": [r.job.template for r in rows],
               "output": [r.job.output for r in rows], "status": [r.status for r in rows],
               "seconds": [round(float(r.seconds), 3) for r in rows],
               "n_candidates": [-1 if r.n_candidates is None else int(r.n_candidates) for r in rows],
               "error": [r.error.replace("\n", " ") for r in rows]})
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed", "cancelled")}
    t.meta["counts"] = counts
    return t


def format_summary(results: Sequence) -> str:
    """The summary as text lines for the terminal."""
    t = summary_table(results)
    lines = [f"{'status':9s} {'seconds':>8s}  science", "-" * 60]
    for row in t:
        err = f"  ({row['error']})" if row["error"] else ""
        lines.append(f"{row['status']:9s} {row['seconds']:8.1f}  {os.path.basename(row['science'])}{err}")
    c = t.meta["counts"]
    lines.append(", ".join(f"{v} {k}" for k, v in c.items() if v or k in ("done", "failed")))
    return "\n".join(lines)


def write_summary(results: Sequence, out_dir) -> str:
    """Write the summary table as ``batch-summary-<UTC time>.ecsv`` in ``out_dir`` (atomic)."""
    from .results_io import atomic_write

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = os.path.join(os.fspath(out_dir), f"batch-summary-{stamp}.ecsv")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(os.fspath(out_dir), f"batch-summary-{stamp}-{n}.ecsv")
    t = summary_table(results)
    return atomic_write(path, lambda tmp: t.write(tmp, format="ascii.ecsv", overwrite=True))
