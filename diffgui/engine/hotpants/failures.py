"""HOTPANTS's silent failures (exit code 0, no stamps, all-zero output, FATAL
messages) turned into ExecutableError with the reason."""

from __future__ import annotations

import re
import signal

import numpy as np

from diffgui.engine.errors import ExecutableError
from diffgui.engine.hotpants.outputs import HotpantsOutputs
from diffgui.engine.hotpants.process import ProcessResult

# ---- failures ------------------------------------------------------------------------------

_FATAL = re.compile(r"^\s*(FATAL|ERROR)\b|Segmentation fault|core dumped|cannot allocate",
                    re.IGNORECASE)


def _fatal_lines(text):
    return [ln.strip() for ln in text.splitlines() if _FATAL.search(ln)]


def _tail(text, n=8):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def check_process(proc: ProcessResult):
    """Raise :class:`ExecutableError` for a crash, a non-zero exit or a FATAL message."""
    text = proc.stderr + "\n" + proc.stdout
    fatal = _fatal_lines(text)
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        raise ExecutableError(f"HOTPANTS crashed ({sig}). Last output:\n{_tail(text)}")
    if proc.returncode != 0:
        msg = fatal[0] if fatal else _tail(text)
        raise ExecutableError(f"HOTPANTS failed with exit code {proc.returncode}: {msg}")
    if fatal:
        raise ExecutableError(f"HOTPANTS reported an error: {fatal[0]}")


def _threshold_reasons(image, template, options):
    out = []
    options = options or {}
    for name, data, p in (("template", template, "t"), ("science image", image, "i")):
        if data is None:
            continue
        lo = float(options.get(p + "l", 0.0))
        hi = float(options.get(p + "u", 25000.0))
        d = np.asarray(data)[::3, ::3]
        d = d[np.isfinite(d)]
        if d.size == 0:
            continue
        low = float(np.mean(d <= lo))
        high = float(np.mean(d >= hi))
        if low > 0.2:
            out.append(f"{100 * low:.0f}% of the {name} pixels are at or below the lower "
                       f"threshold {p}l={lo:g} (median {float(np.median(d)):.3g}): for "
                       f"background-subtracted data give a negative {p}l and a noise map")
        if high > 0.2:
            out.append(f"{100 * high:.0f}% of the {name} pixels are at or above the upper "
                       f"threshold {p}u={hi:g}")
    return out


def diagnose_no_stamps(stderr="", image=None, template=None, options=None) -> str:
    """Why HOTPANTS found no kernel stamps, as far as can be told."""
    reasons = _threshold_reasons(image, template, options)
    m = re.findall(r"(\d+) and (\d+) stamps built", stderr or "") or \
        re.findall(r"(\d+) stamps built", stderr or "")
    built = f" (its log says: '{m[-1] if isinstance(m[-1], str) else ' and '.join(m[-1])} stamps built')" \
        if m else ""
    good = re.findall(r"Good (templ|image) data : ([-\d.e+]+) -> ([-\d.e+]+)", stderr or "")
    if not reasons and good:
        rng = "; ".join(f"{w} {a} .. {b}" for w, a, b in good)
        reasons.append(f"the valid data ranges were {rng}")
    if not reasons:
        reasons.append("no star was found above the stamp threshold ft (star-free images, "
                       "or everything masked)")
    return ("HOTPANTS found no usable kernel stamps and wrote an empty (all-zero) "
            "difference although it exited with code 0" + built + ": " + "; ".join(reasons) + ".")


def check_outputs(out: HotpantsOutputs, *, stderr="", image=None, template=None,
                  options=None) -> HotpantsOutputs:
    """Raise :class:`ExecutableError` when the outputs are HOTPANTS's silent failure.

    A run without stamps exits with code 0 and writes an all-zero
    difference without KSUMnn/CONVOLnn keywords; any of those signs is
    reported with the reason (see :func:`diagnose_no_stamps`).
    """
    h = out.header
    nreg = int(h.get("NREGION", 1) or 1)
    missing = [k for k in range(nreg) if f"KSUM{k:02d}" not in h]
    finite = np.isfinite(out.diff)
    fill = float(h.get("MASKVAL", 1e-30))
    empty = not np.any((out.diff != 0) & (out.diff != np.float32(fill)) & finite)
    if missing or empty:
        why = diagnose_no_stamps(stderr, image, template, options)
        if missing and len(missing) < nreg:
            why = (f"HOTPANTS found no stamps in region(s) {missing} of {nreg}: those parts "
                   "of the difference are empty. " + why.split(": ", 1)[-1])
        raise ExecutableError(why)
    if not finite.all():
        raise ExecutableError("HOTPANTS wrote non-finite values in the difference image: "
                              "the fit was corrupted (unmasked NaNs or a singular kernel).")
    return out

