"""The convolution kernel of a run at a position, or on a grid across the field (no Qt).

Each method hands its kernel back in its own form: SFFT an object with
``evaluate_kernel_at(x, y, image_shape)``, HOTPANTS the raw kernel table (drawn
through the engine's Alard-Lupton basis rebuild when available), ZOGY no kernel
but the PSF of the difference image (constant over the field). This module hides
those differences behind :func:`kernel_at` and :func:`kernel_grid`. A callable
kernel (the native HOTPANTS ``SpatialKernel``) is evaluated as ``kernel(x, y)``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["has_kernel", "kernel_at", "kernel_grid", "kernel_title"]

_LAST_TABLE = [None, None]  # (table, SpatialKernel) of the last table rebuilt


def _source(results: dict):
    k = results.get("kernel")
    if k is not None:
        return k
    return results.get("psf")


def kernel_title(results: dict) -> str:
    """``'Kernel'`` or ``'Difference PSF'`` depending on what the run provides."""
    return "Kernel" if results.get("kernel") is not None else "Difference PSF"


def _from_table(table, results: dict, shape):
    """A HOTPANTS kernel table rebuilt as the engine's callable SpatialKernel (or None)."""
    try:
        from diffgui.engine.alard_lupton import SpatialKernel
    except ImportError:
        return None
    header = results.get("header")
    header = header if header is not None else getattr(table, "meta", {})
    return SpatialKernel.from_table(table, getattr(table, "meta", {}), header, tuple(shape))


def _evaluator(results: dict, shape):
    """A function ``(x, y) -> 2-D kernel`` for the run's kernel, or None."""
    k = _source(results)
    if k is None:
        return None
    if isinstance(k, np.ndarray):
        return (lambda x, y: k) if k.ndim == 2 else None
    if hasattr(k, "evaluate_kernel_at"):  # SFFTResult
        return lambda x, y: k.evaluate_kernel_at(x, y, tuple(shape))
    if callable(k):  # SpatialKernel (native HOTPANTS)
        return k
    if hasattr(k, "colnames"):  # raw HOTPANTS kernel table
        if _LAST_TABLE[0] is not k:  # rebuilding the basis costs more than one cursor move
            _LAST_TABLE[:] = [k, _from_table(k, results, shape)]
        return _LAST_TABLE[1]
    return None


def has_kernel(results: dict) -> bool:
    """True when :func:`kernel_at` may draw something for these results."""
    k = _source(results)
    if k is None:
        return False
    if isinstance(k, np.ndarray):
        return k.ndim == 2
    return hasattr(k, "evaluate_kernel_at") or callable(k) or hasattr(k, "colnames")


def kernel_at(results: dict, x: float, y: float, shape) -> Optional[np.ndarray]:
    """The kernel (2-D array) at 0-based pixel ``(x, y)`` of an image of ``shape``, or None."""
    fn = _evaluator(results, shape)
    if fn is None:
        return None
    return np.asarray(fn(float(x), float(y)), dtype=float)


def kernel_grid(results: dict, shape, n: int = 3, gap: int = 1) -> Optional[np.ndarray]:
    """An ``n x n`` mosaic of kernels evaluated at the centres of an ``n x n`` grid of the field.

    Tiles are separated by ``gap`` NaN pixels; row 0 of the mosaic is the bottom of the image,
    as in the image panels.
    """
    ny, nx = shape
    fn = _evaluator(results, shape)
    if fn is None:
        return None
    tiles = []
    for j in range(n):
        row = []
        for i in range(n):
            row.append(np.asarray(fn((i + 0.5) * nx / n - 0.5, (j + 0.5) * ny / n - 0.5), float))
        tiles.append(row)
    ky, kx = tiles[0][0].shape
    out = np.full((n * ky + (n - 1) * gap, n * kx + (n - 1) * gap), np.nan)
    for j in range(n):
        for i in range(n):
            y0, x0 = j * (ky + gap), i * (kx + gap)
            out[y0:y0 + ky, x0:x0 + kx] = tiles[j][i]
    return out
