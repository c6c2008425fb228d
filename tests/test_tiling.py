"""Tiling geometry and stitching (diffgui.engine.common.tiling)."""

import numpy as np
import pytest

from diffgui.engine.errors import InputError
from diffgui.engine.common.tiling import make_tiles, normalize_grid, stitch


def _coverage(shape, tiles):
    cov = np.zeros(shape, int)
    for t in tiles:
        cov[t.inner] += 1
    return cov


@pytest.mark.parametrize("shape,nx,ny", [((256, 256), 2, 2), ((255, 301), 2, 3), ((97, 250), 3, 1),
                                         ((64, 64), 1, 1)])
@pytest.mark.parametrize("overlap", [0, 7, 50])
def test_interiors_cover_every_pixel_once(shape, nx, ny, overlap):
    tiles = make_tiles(shape, nx, ny, overlap)
    assert len(tiles) == nx * ny
    assert (_coverage(shape, tiles) == 1).all()
    for t in tiles:
        (oy, ox), (iy, ix) = t.outer, t.inner
        # outer = inner widened by the overlap, clipped to the image
        assert ox.start == max(0, ix.start - overlap) and ox.stop == min(shape[1], ix.stop + overlap)
        assert oy.start == max(0, iy.start - overlap) and oy.stop == min(shape[0], iy.stop + overlap)


def test_stdpipe_block_geometry_and_remainder():
    # 301 = 2 * 150 + 1: stdpipe's blocks are 150 wide and leave column 300 out.
    tiles = make_tiles((100, 301), nx=2, ny=1, overlap=0)
    assert [t.inner[1] for t in tiles] == [slice(0, 150), slice(150, 301)]
    # x-major order: x outer loop, y inner loop
    tiles = make_tiles((100, 100), nx=2, ny=3, overlap=0)
    assert [(t.ix, t.iy) for t in tiles] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [t.index for t in tiles] == list(range(6))


def test_ny_defaults_to_nx_and_validation():
    assert normalize_grid(3) == (3, 3)
    assert len(make_tiles((64, 64), 2)) == 4
    for bad in (0, -1, 1.5, "a", None):
        with pytest.raises(InputError):
            make_tiles((64, 64), bad)
    with pytest.raises(InputError, match="overlap"):
        make_tiles((64, 64), 2, 2, overlap=-1)
    with pytest.raises(InputError, match="fewer tiles"):
        make_tiles((64, 64), 8, 8)


def test_stitch_keeps_only_interiors():
    shape = (120, 130)
    tiles = make_tiles(shape, 2, 2, overlap=20)
    truth = np.arange(np.prod(shape), dtype=float).reshape(shape)
    results = []
    for t in tiles:
        r = truth[t.outer].copy()
        # garbage in the overlap band (where a tile's FFT edges would be)
        band = np.ones(t.shape, bool)
        band[t.inner_local] = False
        r[band] = -1e9
        results.append(r)
    out = stitch(tiles, results, shape)
    assert np.array_equal(out, truth)
    # order does not matter
    out2 = stitch(tiles[::-1], results[::-1], shape)
    assert np.array_equal(out2, truth)
    with pytest.raises(ValueError):
        stitch(tiles, [r[:-1] for r in results], shape)


def test_tile_centre_and_origin():
    t = make_tiles((100, 200), 2, 1, overlap=10)[1]
    assert t.center == (149.5, 49.5)
    assert t.origin == (90, 0)
    assert t.shape == (100, 110)
