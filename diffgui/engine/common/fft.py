"""Real 2-D FFTs with reused pyfftw plans, FFT-friendly sizes and convolution helpers.

pyfftw plans are built once per (shape, direction, threads) and kept in a
small cache, so repeated transforms of the same size (tiles, iterations, the
GUI re-running a method) pay no planning cost. Without pyfftw the same
functions fall back to :mod:`scipy.fft` (multi-threaded) and finally numpy.

All functions take and return native float64 / complex128 arrays and never
modify their inputs.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

try:  # pragma: no cover - depends on the environment
    import pyfftw
    import pyfftw.builders as _builders

    HAVE_PYFFTW = True
except Exception:  # pragma: no cover
    pyfftw = None
    _builders = None
    HAVE_PYFFTW = False

try:
    import scipy.fft as _scipy_fft
except Exception:  # pragma: no cover
    _scipy_fft = None

__all__ = [
    "HAVE_PYFFTW",
    "resolve_threads",
    "next_fast_size",
    "padded_shape",
    "rfft2",
    "irfft2",
    "fft_convolve",
    "kernel_to_origin",
    "clear_plan_cache",
]

_MAX_PLANS = 16
_plans: "OrderedDict[tuple, object]" = OrderedDict()
_plan_lock = threading.Lock()
# FFTW plans are not safe to execute concurrently; one lock per plan.
_exec_locks: dict = {}


def resolve_threads(nthreads=0) -> int:
    """Number of FFT threads: ``nthreads`` if positive, else ``$DIFFGUI_THREADS`` (set in each
    worker of a batch so that workers do not oversubscribe the cores), else the usable cores."""
    if nthreads and int(nthreads) > 0:
        return int(nthreads)
    env = os.environ.get("DIFFGUI_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except Exception:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


#: Arrays smaller than this (pixels) are transformed by one thread when the thread
#: count is automatic: FFTW's worker threads cost ~10 ms of CPU per transform in
#: synchronisation, measured at any size on 2 loaded cores (a 280^2 transform: 0.4 ms
#: on one thread, 16 ms on two), which made tiled ZOGY and region previews several
#: times slower; large frames still use every core.
MIN_THREADED_SIZE = 2 ** 21


def _auto_threads(shape, nthreads, threads: int) -> int:
    if threads > 1 and not (nthreads and int(nthreads) > 0) and shape[0] * shape[1] < MIN_THREADED_SIZE:
        return 1
    return threads


def next_fast_size(n: int) -> int:
    """Smallest integer >= ``n`` whose prime factors are 2, 3, 5 and 7."""
    n = int(n)
    if n <= 1:
        return 1
    if _scipy_fft is not None:
        return int(_scipy_fft.next_fast_len(n, real=True))
    best = 2 ** int(np.ceil(np.log2(n)))
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                p2 = p3
                while p2 < n:
                    p2 *= 2
                best = min(best, p2)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


def padded_shape(shape, pad=(0, 0)) -> tuple:
    """FFT-friendly shape at least ``shape + pad`` along each axis."""
    return tuple(next_fast_size(int(s) + int(p)) for s, p in zip(shape, pad))


def _plan(kind: str, shape: tuple, threads: int):
    key = (kind, shape, threads)
    with _plan_lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan, _exec_locks[key]
    # Plan outside the global lock: planning can take a while. FFTW_MEASURE
    # costs seconds per plan on large arrays (measured: ~9 s at 2048^2, ~17 s
    # at 4096^2) for no faster execution than FFTW_ESTIMATE. It also picks the
    # algorithm by timing, so two processes could round differently: a preset
    # run by `diffgui run` must reproduce the window's result bit for bit, so
    # every plan is FFTW_ESTIMATE (deterministic; measured ~4.6 s saved on the
    # first 208^2 plan too).
    effort = "FFTW_ESTIMATE"
    if kind == "r2c":
        arr = pyfftw.empty_aligned(shape, dtype="float64")
        plan = _builders.rfft2(arr, threads=threads, planner_effort=effort,
                               avoid_copy=False, auto_align_input=True)
    else:
        real_shape = shape
        cshape = (real_shape[0], real_shape[1] // 2 + 1)
        arr = pyfftw.empty_aligned(cshape, dtype="complex128")
        plan = _builders.irfft2(arr, s=real_shape, threads=threads, planner_effort=effort,
                                avoid_copy=False, auto_align_input=True)
    with _plan_lock:
        if key not in _plans:
            _plans[key] = plan
            _exec_locks[key] = threading.Lock()
            while len(_plans) > _MAX_PLANS:
                old, _ = _plans.popitem(last=False)
                _exec_locks.pop(old, None)
        return _plans[key], _exec_locks[key]


def clear_plan_cache() -> None:
    """Forget every cached FFTW plan (frees their aligned buffers)."""
    with _plan_lock:
        _plans.clear()
        _exec_locks.clear()


def _execute_into(plan, out):
    """Run ``plan`` writing into the new aligned array ``out`` (no copy of its own
    output buffer), then give the plan its buffer back so that it keeps no
    reference to the caller's result."""
    own = plan.output_array
    try:
        plan.update_arrays(plan.input_array, out)
    except ValueError:  # alignment the plan cannot take: its own buffer and a copy
        plan.execute()
        out[...] = own
        return out
    try:
        plan.execute()
    finally:
        plan.update_arrays(plan.input_array, own)
    return out


def rfft2(a, nthreads=0) -> np.ndarray:
    """Real-to-complex 2-D FFT of ``a`` (float64), shape ``(ny, nx//2 + 1)``.

    Returns a new array that the caller owns.
    """
    a = np.asarray(a, dtype=np.float64)
    threads = _auto_threads(a.shape, nthreads, resolve_threads(nthreads))
    if HAVE_PYFFTW:
        plan, lock = _plan("r2c", a.shape, threads)
        with lock:
            # Copy into the plan's own buffers: calling the plan with an aligned
            # array would make FFTW work on (and c2r destroy) the caller's data.
            plan.input_array[...] = a
            return _execute_into(plan, pyfftw.empty_aligned(plan.output_array.shape, dtype="complex128"))
    if _scipy_fft is not None:
        return _scipy_fft.rfft2(a, workers=threads)
    return np.fft.rfft2(a)  # pragma: no cover


def irfft2(A, shape, nthreads=0) -> np.ndarray:
    """Inverse of :func:`rfft2`: complex ``(ny, nx//2+1)`` to real ``shape``."""
    A = np.asarray(A, dtype=np.complex128)
    shape = tuple(int(s) for s in shape)
    threads = _auto_threads(shape, nthreads, resolve_threads(nthreads))
    if HAVE_PYFFTW:
        plan, lock = _plan("c2r", shape, threads)
        with lock:
            plan.input_array[...] = A  # c2r destroys its input: never hand it A
            # execute() does not normalise, unlike calling the plan
            out = _execute_into(plan, pyfftw.empty_aligned(shape, dtype="float64"))
        out *= 1.0 / (shape[0] * shape[1])
        return out
    if _scipy_fft is not None:
        return _scipy_fft.irfft2(A, s=shape, workers=threads)
    return np.fft.irfft2(A, s=shape)  # pragma: no cover


def kernel_to_origin(kernel, shape) -> np.ndarray:
    """Embed a centred, odd-sized ``kernel`` in a zero array of ``shape`` with
    its centre at index (0, 0), wrapping the rest around.

    This is the placement that makes FFT convolution shift-free for any
    parity of ``shape`` (the stdpipe defect of using ``fftshift`` on odd
    sizes shifts results by one pixel).
    """
    k = np.asarray(kernel, dtype=np.float64)
    ky, kx = k.shape
    if ky % 2 == 0 or kx % 2 == 0:
        raise ValueError(f"kernel must have odd sizes, got {k.shape}")
    ny, nx = shape
    if ky > ny or kx > nx:
        raise ValueError(f"kernel {k.shape} is larger than the array {tuple(shape)}")
    out = np.zeros(shape, dtype=np.float64)
    hy, hx = ky // 2, kx // 2
    ys = (np.arange(ky) - hy) % ny
    xs = (np.arange(kx) - hx) % nx
    out[np.ix_(ys, xs)] = k
    return out


def fft_convolve(image, kernel, nthreads=0, mode: str = "same") -> np.ndarray:
    """Convolve ``image`` with a small odd-sized ``kernel`` by FFT.

    Parameters
    ----------
    image : ndarray
        2-D float image.
    kernel : ndarray
        2-D odd-sized kernel, centred.
    nthreads : int
        FFT threads (0: all cores).
    mode : {'same', 'wrap'}
        ``'same'`` zero-pads to avoid wrap-around and returns the image's
        shape (like ``scipy.signal.fftconvolve(mode='same')``); ``'wrap'``
        convolves circularly on the image's own grid.

    Returns
    -------
    ndarray
        The convolved image, same shape as ``image``.
    """
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    if mode == "wrap":
        K = rfft2(kernel_to_origin(kernel, image.shape), nthreads)
        return irfft2(rfft2(image, nthreads) * K, image.shape, nthreads)
    if mode != "same":
        raise ValueError(f"mode must be 'same' or 'wrap', got {mode!r}")
    ky, kx = kernel.shape
    shape = padded_shape(image.shape, (ky, kx))
    buf = np.zeros(shape)
    buf[: image.shape[0], : image.shape[1]] = image
    K = rfft2(kernel_to_origin(kernel, shape), nthreads)
    out = irfft2(rfft2(buf, nthreads) * K, shape, nthreads)
    return np.ascontiguousarray(out[: image.shape[0], : image.shape[1]])
