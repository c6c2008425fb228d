"""Run history and A/B comparison of runs (no Qt).

:class:`RunHistory` remembers every finished run since the window opened: its
method, the parameters changed against the previous run, its scorecard and its
time. Memory stays bounded: only the newest ``keep_in_memory`` runs keep their
arrays in memory; older runs' arrays go to ``.npy`` files in a cache folder
under the temporary directory, loaded back when the run is shown again, and
the folder is removed by :meth:`RunHistory.close` (and at exit).

:func:`compare` puts two scorecards side by side, marking which run is closer
to each score's ideal.
"""

from __future__ import annotations

import atexit
import csv
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from diffgui.engine.common.quality import METRIC_INFO
from diffgui.engine.errors import InputError

from .tuning import _IDEAL, describe_changes, diff_params

__all__ = ["HistoryEntry", "RunHistory", "compare", "ComparisonRow"]


@dataclass
class HistoryEntry:
    """One run of the history (``run.results`` may be on disk: use :meth:`RunHistory.run`)."""

    run: object
    changes: dict
    finished: float = field(default_factory=time.time)
    on_disk: dict = field(default_factory=dict)  # result name -> .npy path

    @property
    def run_id(self) -> int:
        return self.run.run_id

    @property
    def method(self) -> str:
        return self.run.method

    @property
    def seconds(self) -> float:
        return float(self.run.timings.get("total", float("nan")))

    def changes_text(self) -> str:
        return describe_changes(self.changes) or "(same settings)"

    def metric(self, key: str) -> Optional[float]:
        return ((self.run.quality or {}).get("metrics") or {}).get(key)


class RunHistory:
    """Every finished run since the window opened (newest last).

    Parameters
    ----------
    keep_in_memory : int
        Runs whose arrays stay in memory (>= 1); older ones are cached on disk.
    cache_root : str, optional
        Folder in which the cache folder is made (default: the temporary directory).
    """

    def __init__(self, keep_in_memory: int = 3, cache_root: Optional[str] = None):
        if int(keep_in_memory) < 1:
            raise InputError(f"keep_in_memory must be >= 1, got {keep_in_memory}")
        self.keep_in_memory = int(keep_in_memory)
        self._root = cache_root
        self._dir: Optional[str] = None
        self.entries: list = []
        atexit.register(self.close)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def cache_dir(self) -> Optional[str]:
        """The cache folder (None until a run was moved to disk)."""
        return self._dir

    def add(self, run) -> HistoryEntry:
        """Record a finished run (a run already recorded is returned unchanged)."""
        for e in self.entries:
            if e.run is run or e.run_id == run.run_id:
                return e
        prev = self.entries[-1].run if self.entries else None
        if prev is None:
            changes = {}
        elif prev.method != run.method:
            changes = {"method": run.method}
        else:
            changes = diff_params(prev.params, run.params)
        entry = HistoryEntry(run, changes)
        self.entries.append(entry)
        self._offload()
        return entry

    def index_of(self, run_id: int) -> int:
        for i, e in enumerate(self.entries):
            if e.run_id == run_id:
                return i
        raise InputError(f"run {run_id} is not in the history")

    def run(self, i: int):
        """The run of entry ``i`` with its arrays (loaded back from disk when needed)."""
        e = self.entries[i]
        if e.on_disk:
            for key, path in e.on_disk.items():
                e.run.results[key] = np.load(path)
                os.remove(path)
            e.on_disk = {}
            self.entries.remove(e)  # now the most recently used
            self.entries.append(e)
            self._offload(protect=e)
        return e.run

    def delete(self, i: int) -> None:
        """Forget entry ``i`` (and its cached files)."""
        e = self.entries.pop(i)
        for path in e.on_disk.values():
            if os.path.exists(path):
                os.remove(path)

    def _offload(self, protect=None) -> None:
        in_memory = [e for e in self.entries if not e.on_disk and _arrays(e.run)]
        for e in in_memory[:max(0, len(in_memory) - self.keep_in_memory)]:
            if e is protect:
                continue
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="diffgui-history-", dir=self._root)
            for key, arr in _arrays(e.run).items():
                path = os.path.join(self._dir, f"run{e.run_id}_{key}.npy")
                np.save(path, arr)
                e.on_disk[key] = path
                del e.run.results[key]

    def in_memory_bytes(self) -> int:
        """Bytes of result arrays held in memory."""
        return sum(a.nbytes for e in self.entries for a in _arrays(e.run).values())

    def to_csv(self) -> str:
        """The history as CSV text (one row per run, every score)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run_id", "finished_utc", "method", "changes", "seconds", *METRIC_INFO, "flagged"])
        for e in self.entries:
            q = e.run.quality or {}
            w.writerow([e.run_id, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e.finished)), e.method,
                        e.changes_text(), f"{e.seconds:.3f}",
                        *["" if e.metric(k) is None else e.metric(k) for k in METRIC_INFO],
                        " ".join(q.get("flagged") or [])])
        return buf.getvalue()

    def export_csv(self, path, overwrite: bool = False) -> str:
        """Write :meth:`to_csv` atomically; never replaces a file unless ``overwrite``."""
        from .results_io import atomic_write

        text = self.to_csv()

        def write(tmp):
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                fh.write(text)
        atomic_write(path, write, overwrite=overwrite)
        return os.fspath(path)

    def close(self) -> None:
        """Remove the cache folder (arrays of offloaded runs are lost)."""
        if self._dir is not None and os.path.isdir(self._dir):
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        for e in self.entries:
            e.on_disk = {}


def _arrays(run) -> dict:
    return {k: v for k, v in run.results.items() if isinstance(v, np.ndarray) and v.ndim == 2}


@dataclass
class ComparisonRow:
    """One score of two runs: values, whether it changed, and which is closer to ideal."""

    key: str
    label: str
    a: Optional[float]
    b: Optional[float]
    changed: bool
    better: str  # 'a', 'b' or '' (equal or not comparable)
    ideal: str


def compare(quality_a: dict, quality_b: dict, rel: float = 0.02) -> list:
    """Side-by-side scorecards: a :class:`ComparisonRow` per score.

    A value counts as changed when it differs by more than ``rel`` (relative) or
    0.005; ``better`` names the run closer to the score's ideal.
    """
    ma = (quality_a or {}).get("metrics") or {}
    mb = (quality_b or {}).get("metrics") or {}
    rows = []
    for key, (label, ideal_text, _) in METRIC_INFO.items():
        a, b = ma.get(key), mb.get(key)
        changed = (a is None) != (b is None) or (
            a is not None and abs(a - b) > max(rel * max(abs(a), abs(b)), 0.005))
        better = ""
        ideal = _IDEAL.get(key)
        if changed and a is not None and b is not None and ideal is not None:
            better = "a" if abs(a - ideal) < abs(b - ideal) else "b"
        rows.append(ComparisonRow(key, label, a, b, bool(changed), better, ideal_text))
    return rows
