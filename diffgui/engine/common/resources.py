"""Memory guard: estimate a run's peak memory before running it, and refuse
runs that would not fit.

A 51x51 SFFT kernel with 5th-order variation has 54 621 parameters, and its
normal equations alone take 24 GB: such a run used to grow until the kernel
killed it. Every ``run_*`` now calls :func:`check_memory` first, which
estimates the peak from the parameters and the image size
(:func:`estimate_memory`, calibrated with ``bench/bench_memory.py``, peak RSS
growth on simulated pairs) and raises :class:`InputError` with the estimate
and the limit when it is above the limit.

The limit is, in order: the ``memory_limit`` argument, the environment
variable ``DIFFGUI_MEMORY_LIMIT``, or :data:`DEFAULT_SHARE` of the memory
available now (``/proc/meminfo`` MemAvailable, a cgroup limit when lower, or
psutil when installed). Limits are given as bytes (a number), a text with a
unit (``'8G'``, ``'512MB'``), a share (``'50%'``), or ``'off'``/``inf`` to
disable the guard.
"""

from __future__ import annotations

import math
import os
import re
from typing import Optional

from diffgui.engine.errors import InputError

__all__ = [
    "DEFAULT_SHARE",
    "ENV_VAR",
    "available_memory",
    "parse_memory_limit",
    "resolve_memory_limit",
    "estimate_memory",
    "check_memory",
    "format_bytes",
]

#: Share of the available memory a run may use by default.
DEFAULT_SHARE = 0.75
#: Environment variable holding the limit when ``memory_limit`` is not passed.
ENV_VAR = "DIFFGUI_MEMORY_LIMIT"

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20,
          "mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40,
          "tib": 2**40}
_OFF = {"off", "none", "no", "inf", "infinity", "unlimited", "0"}


def format_bytes(n: float) -> str:
    """``1.5 GB``-style text for a byte count."""
    if not math.isfinite(n):
        return "unlimited"
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> Optional[int]:
    """Bytes of memory available to this process now, or None when unknown.

    ``MemAvailable`` of ``/proc/meminfo`` (psutil's figure when psutil is
    installed), lowered to the free part of a cgroup v2 limit when one is set.
    """
    avail = None
    try:
        import psutil  # optional

        avail = int(psutil.virtual_memory().available)
    except Exception:
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            avail = None
    cg_max = _read_int("/sys/fs/cgroup/memory.max")
    cg_cur = _read_int("/sys/fs/cgroup/memory.current")
    if cg_max is not None and cg_cur is not None:
        free = max(cg_max - cg_cur, 0)
        avail = free if avail is None else min(avail, free)
    return avail


def parse_memory_limit(value, name: str = "memory_limit") -> Optional[float]:
    """A limit as bytes (``inf`` = no limit), or None for "use the default".

    ``value`` is None, a number of bytes, or a text: ``'8G'``, ``'512 MB'``,
    ``'50%'`` (of the available memory), ``'off'``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError(f"'{name}' must be a size such as 8G, a share such as 50%, or off; "
                         f"got {value!r}.")
    if isinstance(value, (int, float)) or hasattr(value, "__float__") and not isinstance(value, str):
        f = float(value)
        if math.isnan(f) or f < 0:
            raise InputError(f"'{name}' must be a positive number of bytes, got {value!r}.")
        return math.inf if f == 0 or math.isinf(f) else f
    text = str(value).strip().lower()
    if text in _OFF:
        return math.inf
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*(%|[a-z]*)", text)
    if not m or (m.group(2) not in _UNITS and m.group(2) != "%"):
        raise InputError(f"'{name}' must be a size such as 8G or 512MB, a share such as 50%, or "
                         f"off; got {value!r}.")
    number = float(m.group(1))
    if m.group(2) == "%":
        if not 0 < number <= 100:
            raise InputError(f"'{name}' share must be in (0, 100]%, got {value!r}.")
        avail = available_memory()
        return math.inf if avail is None else avail * number / 100.0
    if number <= 0:
        return math.inf
    return number * _UNITS[m.group(2)]


def resolve_memory_limit(memory_limit=None) -> float:
    """The limit in bytes: the argument, else ``$DIFFGUI_MEMORY_LIMIT``, else
    :data:`DEFAULT_SHARE` of :func:`available_memory` (``inf`` when unknown)."""
    limit = parse_memory_limit(memory_limit)
    if limit is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            limit = parse_memory_limit(env, name=ENV_VAR)
    if limit is None:
        avail = available_memory()
        limit = math.inf if avail is None else DEFAULT_SHARE * avail
    return limit


# ---- estimates ---------------------------------------------------------------------------
# Coefficients from bench/bench_memory.py (peak RSS growth; see bench/README.md). They
# round up, so that the estimate is an upper bound of the measured peak.
_SFFT_MATRICES = 9.0       # n x n float64 matrices alive at once (H, Hz, Hd, Hp, Cholesky...)
_SFFT_ROW_CHUNK = 8192     # design rows built at once (assembly.DesignRows.accumulate)
_SFFT_ROW_COPIES = 1.5
_SFFT_IMAGES = 12.0        # image-sized float64 arrays
_SFFT_SPECTRA = 1.0        # per kernel monomial: stored template spectra + work copies
_ZOGY_IMAGES = 15.0        # full-size float64 arrays (inputs, noise, PSF estimation, outputs)
_ZOGY_SPECTRA = 6.0       # sub-image complex128 arrays during the ZOGY FFT stage
_HP_IMAGES = 8.0 
_BASE = 64 * 2**20         # fixed overhead of a run


def _kernel_shape(kernel_shape):
    try:
        if isinstance(kernel_shape, (int, float)):
            ky = kx = int(kernel_shape)
        else:
            ky, kx = (int(v) for v in kernel_shape)
    except (TypeError, ValueError):
        raise InputError(f"kernel_shape must be an odd size or a pair (ky, kx), got "
                         f"{kernel_shape!r}.") from None
    return max(ky, 1), max(kx, 1)


def _n_poly(order) -> int:
    try:
        o = max(int(order), 0)
    except (TypeError, ValueError):
        raise InputError(f"polynomial orders must be integers, got {order!r}.") from None
    return (o + 1) * (o + 2) // 2


def _sfft_estimate(shape, kernel_shape=(7, 7), kernel_poly_order=2, bg_poly_order=2, **_):
    ny, nx = shape
    ky, kx = _kernel_shape(kernel_shape)
    nkp = _n_poly(kernel_poly_order)
    n = ky * kx * nkp + _n_poly(bg_poly_order)
    npix = ny * nx
    padded = (ny + 4 * (ky // 2)) * (nx + 4 * (kx // 2))
    mats = _SFFT_MATRICES * 8.0 * n * n
    rows = _SFFT_ROW_COPIES * 8.0 * min(_SFFT_ROW_CHUNK, npix) * n
    # Correlation tables: one complex row block per monomial pair and lag column.
    strip_rows = min(ny + 4 * (ky // 2), max(1, (1 << 21) // (nx + 4 * (kx // 2))))
    tables = 16.0 * nkp * (nkp + 1) / 2 * strip_rows * (4 * (kx // 2) + 1)
    return mats + rows + tables + _SFFT_IMAGES * 8.0 * npix + _SFFT_SPECTRA * 8.0 * nkp * padded


def _subimage_pixels(shape, nx=1, ny=None, overlap=50):
    sy, sx = shape
    nxs = max(int(nx or 1), 1)
    nys = max(int(ny if ny is not None else nxs), 1)
    ov = max(int(overlap or 0), 0)
    return min(sy, sy // nys + 2 * ov) * min(sx, sx // nxs + 2 * ov)


def _zogy_estimate(shape, nx=1, ny=None, overlap=50, **_):
    npix = shape[0] * shape[1]
    sub = _subimage_pixels(shape, nx, ny, overlap)
    return _ZOGY_IMAGES * 8.0 * npix + _ZOGY_SPECTRA * 16.0 * sub


def _hotpants_estimate(shape, **_):
    return _HP_IMAGES * 8.0 * shape[0] * shape[1]


_ESTIMATES = {"sfft": _sfft_estimate, "zogy": _zogy_estimate, "hotpants": _hotpants_estimate}


def estimate_memory(method: str, shape, **params) -> float:
    """Estimated peak memory (bytes) of ``run_<method>`` on images of ``shape``.

    Parameters
    ----------
    method : {'sfft', 'zogy', 'hotpants'}
    shape : tuple of int
        Image shape (ny, nx).
    **params
        The run's parameters; those that change the memory are used
        (SFFT: ``kernel_shape``, ``kernel_poly_order``, ``bg_poly_order``;
        ZOGY: ``nx``, ``ny``, ``overlap``), the others are ignored.

    Returns
    -------
    float
        Upper estimate of the peak growth of the process memory, in bytes.
    """
    try:
        func = _ESTIMATES[str(method).lower()]
    except KeyError:
        raise InputError(f"unknown method {method!r}: expected one of {sorted(_ESTIMATES)}") from None
    ny, nx = (int(v) for v in shape)
    return float(_BASE + func((ny, nx), **params))


def check_memory(method: str, shape, memory_limit=None, log=None, **params) -> float:
    """Refuse a run whose estimated peak memory is above the limit.

    Parameters
    ----------
    method : str
        'sfft', 'zogy' or 'hotpants'.
    shape : tuple of int
        Image shape.
    memory_limit : float, str or None
        See :func:`resolve_memory_limit`.
    log : callable, optional
        Receives a message with the estimate.
    **params
        Parameters of the run (see :func:`estimate_memory`).

    Returns
    -------
    float
        The estimate in bytes.

    Raises
    ------
    InputError
        The estimate is above the limit (the message gives both, and how to
        change the limit).
    """
    est = estimate_memory(method, shape, **params)
    limit = resolve_memory_limit(memory_limit)
    if log is not None:
        log(f"{method}: estimated peak memory {format_bytes(est)} (limit {format_bytes(limit)})")
    if est > limit:
        hint = ""
        if method == "sfft":
            hint = " Use a smaller kernel_shape or lower kernel_poly_order."
        elif method == "zogy":
            hint = " Use more sub-images (nx, ny)."
        raise InputError(
            f"{method} would need about {format_bytes(est)} of memory for a {shape[0]}x{shape[1]} "
            f"image, above the limit of {format_bytes(limit)}.{hint} The limit is "
            f"{int(DEFAULT_SHARE * 100)}% of the available memory unless set with memory_limit= "
            f"(bytes, '8G', '50%' or 'off'), ${ENV_VAR} or --memory-limit.")
    return est
