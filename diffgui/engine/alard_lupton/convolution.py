"""FFT convolution of one region with the kernel varying per pixel, in tiles."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from diffgui.engine.alard_lupton.basis import poly_terms
from diffgui.engine.common import fft as _fft

if TYPE_CHECKING:  # annotations only (kernel.py imports this module)
    from diffgui.engine.alard_lupton.kernel import SpatialKernel

# ---- FFT convolution of one region, per pixel kernel variation ----------------------------

_TILE = 1024
_WORKERS = 2
# Below this fraction of bad pixels in a tile, their |K| footprints are added directly.
_SPARSE_BAD = 0.002


def _tile_plan(good, r, tile=None):
    """Tile cores covering the good range, balanced so that every tile uses
    one FFT shape of at most about ``tile`` pixels per side."""
    tile = tile or _TILE
    x0, x1, y0, y1 = good
    shape = []
    for n in (y1 - y0 + 1, x1 - x0 + 1):
        nt = max(1, math.ceil(n / max(64, tile - 2 * r)))
        core = math.ceil(n / nt)
        shape.append(_fft.next_fast_size(core + 2 * r))
    fy, fx = shape
    cy, cx = fy - 2 * r, fx - 2 * r
    tiles = []
    for ty in range(y0, y1 + 1, cy):
        for tx in range(x0, x1 + 1, cx):
            tiles.append((ty, min(ty + cy, y1 + 1), tx, min(tx + cx, x1 + 1)))
    return tiles, (fy, fx)


def _window(arr, ty0, ty1, tx0, tx1, r, fshape, fill=0.0):
    """arr[ty0-r:ty1+r, tx0-r:tx1+r] in a zero array of fshape (zeros outside the image)."""
    ny, nx = arr.shape
    buf = np.zeros(fshape)
    ya, yb = max(0, ty0 - r), min(ny, ty1 + r)
    xa, xb = max(0, tx0 - r), min(nx, tx1 + r)
    sub = arr[ya:yb, xa:xb]
    oy, ox = ya - (ty0 - r), xa - (tx0 - r)
    buf[oy:oy + sub.shape[0], ox:ox + sub.shape[1]] = sub
    if fill is not None:
        bad = ~np.isfinite(buf)
        if bad.any():
            buf[bad] = fill
    return buf


def _convolve_region_fft(kernel: SpatialKernel, k: int, img, out, nthreads=0):
    reg = kernel.regions[k]
    r = kernel.r
    tiles, fshape = _tile_plan(reg.good, r)
    FK = [_fft.rfft2(_fft.kernel_to_origin(kk, fshape), nthreads)
          for kk in kernel.poly_kernels(k)]
    terms = poly_terms(kernel.ko)
    for ty0, ty1, tx0, tx1 in tiles:
        F = _fft.rfft2(_window(img, ty0, ty1, tx0, tx1, r, fshape), nthreads)
        xn, yn = reg.norm_xy(np.arange(tx0, tx1), np.arange(ty0, ty1))
        acc = np.zeros((ty1 - ty0, tx1 - tx0))
        for (i, j), fk in zip(terms, FK):
            c = _fft.irfft2(F * fk, fshape, nthreads)[r:r + ty1 - ty0, r:r + tx1 - tx0]
            if i or j:
                c *= (yn ** j)[:, None] * (xn ** i)[None, :]
            acc += c
        out[ty0:ty1, tx0:tx1] = acc

