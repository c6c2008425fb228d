"""Split an image into ``nx`` x ``ny`` overlapping sub-images and stitch results back.

Geometry follows stdpipe's ``split_image`` where it is sound: blocks of
``floor(W / nx)`` x ``floor(H / ny)`` pixels in x-major order (x outer loop,
y inner loop), each widened by ``overlap`` pixels on every side and clipped to
the image. Two things differ on purpose:

- the last block of a row or column extends to the image edge, so the
  remainder columns/rows are covered when the size is not divisible by ``nx``
  or ``ny`` (stdpipe leaves them as zeros with ``overlap=0``);
- stitching copies only each tile's own block (its *interior*), never the
  overlap band, so a tile's wrapped or mirrored edges never overwrite a
  neighbour's good pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from diffgui.engine.errors import InputError

__all__ = ["Tile", "make_tiles", "stitch", "normalize_grid"]


@dataclass(frozen=True)
class Tile:
    """One sub-image.

    Attributes
    ----------
    index : int
        Position in the x-major processing order.
    ix, iy : int
        Column and row of the tile in the grid.
    outer : tuple of slice
        ``(ys, xs)`` of the sub-image in the full image, overlap included.
    inner : tuple of slice
        ``(ys, xs)`` of the block this tile owns in the full image.
    """

    index: int
    ix: int
    iy: int
    outer: tuple
    inner: tuple

    @property
    def inner_local(self) -> tuple:
        """``inner`` relative to ``outer`` (to cut a tile result)."""
        (oy, ox), (iy, ix) = self.outer, self.inner
        return (slice(iy.start - oy.start, iy.stop - oy.start),
                slice(ix.start - ox.start, ix.stop - ox.start))

    @property
    def shape(self) -> tuple:
        """Shape of the sub-image (overlap included)."""
        ys, xs = self.outer
        return (ys.stop - ys.start, xs.stop - xs.start)

    @property
    def center(self) -> tuple:
        """``(x, y)`` 0-based centre of the tile's own block in the full image."""
        ys, xs = self.inner
        return (0.5 * (xs.start + xs.stop - 1), 0.5 * (ys.start + ys.stop - 1))

    @property
    def origin(self) -> tuple:
        """``(x, y)`` of the sub-image's first pixel in the full image."""
        ys, xs = self.outer
        return (xs.start, ys.start)


def normalize_grid(nx, ny=None) -> tuple:
    """Validate ``nx``/``ny`` (``ny=None`` means ``ny = nx``) and return ints."""
    if ny is None:
        ny = nx
    out = []
    for name, n in (("nx", nx), ("ny", ny)):
        try:
            v = int(n)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be a positive integer, got {n!r}.") from None
        if v != n or v < 1:
            raise InputError(f"{name} must be a positive integer, got {n!r}.")
        out.append(v)
    return tuple(out)


def _edges(n: int, parts: int) -> List[int]:
    block = n // parts
    edges = [i * block for i in range(parts)]
    edges.append(n)  # the last block takes the remainder
    return edges


def make_tiles(shape, nx=1, ny=None, overlap=50, min_size: int = 16) -> List[Tile]:
    """Cut ``shape`` into ``nx`` x ``ny`` overlapping tiles.

    Parameters
    ----------
    shape : tuple of int
        ``(height, width)`` of the image.
    nx, ny : int
        Number of tiles along x and y (``ny=None``: same as ``nx``).
    overlap : int
        Pixels added on every side of each block (clipped to the image).
    min_size : int
        Smallest allowed block size along either axis.

    Returns
    -------
    list of Tile
        In x-major order (x outer loop, y inner loop), like stdpipe.
    """
    nx, ny = normalize_grid(nx, ny)
    try:
        ov = int(overlap)
    except (TypeError, ValueError):
        raise InputError(f"overlap must be a non-negative integer, got {overlap!r}.") from None
    if ov < 0 or ov != overlap:
        raise InputError(f"overlap must be a non-negative integer, got {overlap!r}.")
    h, w = (int(s) for s in shape)
    if w // nx < min_size or h // ny < min_size:
        raise InputError(
            f"a {w}x{h} image cannot be split into {nx}x{ny} tiles: blocks would be "
            f"{w // nx}x{h // ny} pixels, at least {min_size}x{min_size} are needed. Use fewer tiles."
        )
    xe, ye = _edges(w, nx), _edges(h, ny)
    tiles = []
    for ix in range(nx):
        for iy in range(ny):
            x0, x1, y0, y1 = xe[ix], xe[ix + 1], ye[iy], ye[iy + 1]
            outer = (slice(max(0, y0 - ov), min(h, y1 + ov)), slice(max(0, x0 - ov), min(w, x1 + ov)))
            tiles.append(Tile(len(tiles), ix, iy, outer, (slice(y0, y1), slice(x0, x1))))
    return tiles


def stitch(tiles: Sequence[Tile], results: Sequence[Optional[np.ndarray]], shape,
           out: Optional[np.ndarray] = None) -> np.ndarray:
    """Assemble per-tile results (each of its tile's ``shape``) into one image.

    Only each tile's interior is copied, so the order does not matter and the
    overlap bands (where a tile's FFT edges live) are never used.
    """
    if out is None:
        out = np.zeros(tuple(shape), dtype=np.float64)
    for tile, res in zip(tiles, results):
        if res is None:
            continue
        if res.shape != tile.shape:
            raise ValueError(f"result of tile {tile.index} has shape {res.shape}, expected {tile.shape}")
        out[tile.inner] = res[tile.inner_local]
    return out
