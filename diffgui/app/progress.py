"""Progress of a run by stage, with an estimate of the time left (no Qt).

The engine reports ``progress(stage, fraction)`` through its logger (see
:func:`diffgui.engine.errors.make_logger`); :class:`ProgressClock` turns those
reports into one status line. Every time it shows comes from one clock (the
caller's wall clock since the run started), so "running 1.5 s" and "done in
1.6 s" agree.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

__all__ = ["ProgressClock", "format_seconds"]


def format_seconds(t: float) -> str:
    """``'0.63 s'``, ``'12.4 s'``, ``'2 min 05 s'``."""
    if t < 10:
        return f"{t:.2f} s"
    if t < 120:
        return f"{t:.1f} s"
    m, s = divmod(int(round(t)), 60)
    return f"{m} min {s:02d} s"


class ProgressClock:
    """Elapsed time, current stage, fraction and time left of one run.

    Parameters
    ----------
    label : str
        What runs (``'ZOGY'``).
    clock : callable, optional
        Seconds (default :func:`time.perf_counter`); tests pass a fake.
    """

    def __init__(self, label: str, clock: Optional[Callable[[], float]] = None):
        self.label = label
        self.clock = clock or time.perf_counter
        self.t0 = self.clock()
        self.stage: Optional[str] = None
        self.fraction = 0.0
        self._stage_t0 = self.t0
        self._stage_f0 = 0.0

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def update(self, stage: str, fraction: float) -> None:
        """Record a report: ``fraction`` (0..1) of ``stage`` is done."""
        now = self.clock()
        fraction = min(1.0, max(0.0, float(fraction)))
        if stage != self.stage or fraction < self.fraction:
            self.stage, self._stage_t0, self._stage_f0 = stage, now, fraction
        self.fraction = fraction

    def remaining(self) -> Optional[float]:
        """Seconds left in the current stage at its rate so far (None until it can be told)."""
        if self.stage is None:
            return None
        done = self.fraction - self._stage_f0
        spent = self.clock() - self._stage_t0
        if done <= 0.02 or spent <= 0.05:
            return None
        return spent * (1.0 - self.fraction) / done

    def text(self) -> str:
        """``'ZOGY: tiles 45 %, 2.10 s, about 2.60 s left'``."""
        parts = [f"{self.label}"]
        if self.stage is not None:
            parts[0] += f": {self.stage} {100 * self.fraction:.0f} %"
        parts.append(format_seconds(self.elapsed()))
        left = self.remaining()
        if left is not None and self.fraction < 1.0:
            parts.append(f"about {format_seconds(left)} left")
        return ", ".join(parts)

    def done_text(self, engine_seconds: Optional[float] = None) -> str:
        """``'ZOGY done in 1.62 s'`` on the same clock as :meth:`text` (engine time in brackets)."""
        s = f"{self.label} done in {format_seconds(self.elapsed())}"
        if engine_seconds is not None:
            s += f" (engine {format_seconds(engine_seconds)})"
        return s
