"""Kernel regions: one solution per region (its good area and buffered polynomial
frame), and HOTPANTS's layout of regions and stamps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffgui.engine.alard_lupton.basis import poly_terms


@dataclass
class KernelRegion:
    """Solution of one region.

    Attributes
    ----------
    good : (x0, x1, y0, y1)
        0-based inclusive pixel range this region's solution is used for.
    frame : (x0, x1, y0, y1)
        0-based inclusive buffered range; polynomial coordinates are
        normalised to [-1, 1] over it, as HOTPANTS does.
    coeffs : ndarray
        HOTPANTS layout without the unused row 0: the amplitude of basis 0
        (the kernel sum), (ko+1)(ko+2)/2 coefficients per further basis
        function, then the (bgo+1)(bgo+2)/2 background coefficients.
    convolved : str
        'TEMPLATE' or 'IMAGE': which image this kernel convolves.
    stats : dict
        Fit statistics (merit, number of stamps, ...), when known.
    """

    good: tuple
    frame: tuple
    coeffs: np.ndarray
    convolved: str = "TEMPLATE"
    stats: dict = field(default_factory=dict)

    def norm_xy(self, x, y):
        fx0, fx1, fy0, fy1 = self.frame
        hx = 0.5 * (fx1 - fx0 + 1)
        hy = 0.5 * (fy1 - fy0 + 1)
        return (np.asarray(x, float) - fx0 - hx) / hx, (np.asarray(y, float) - fy0 - hy) / hy

    def contains(self, x, y) -> bool:
        x0, x1, y0, y1 = self.good
        return x0 <= x <= x1 and y0 <= y <= y1


def _poly_values(xn, yn, order):
    """Values of the HOTPANTS polynomial terms at (xn, yn): shape (nterms,) + xn.shape."""
    xn = np.asarray(xn, float)
    yn = np.asarray(yn, float)
    return np.array([xn ** i * yn ** j for i, j in poly_terms(order)])



def hotpants_stamp_width(shape, nrx, nry, nsx, nsy, r, rss) -> int:
    """HOTPANTS's stamp width (fwStamp), which sets the buffer of multi-region runs."""
    ny, nx = shape
    fwk, fwss = 2 * r + 1, 2 * rss + 1
    fw = min(nx // nrx // nsx, ny // nry // nsy) - fwk
    fw -= 1 if fw % 2 == 0 else 0
    if fw < fwss:
        fw = fwss + fwk
    return fw


def hotpants_regions(shape, nrx, nry, nsx, nsy, r, rss):
    """Good and buffered (frame) ranges of HOTPANTS's nrx x nry regions.

    Returns
    -------
    list of (good, frame), each (x0, x1, y0, y1) 0-based inclusive, in
    HOTPANTS's order (y outer, x inner).
    """
    ny, nx = shape
    xmax, ymax = nx - 1, ny - 1
    out = []
    n = nrx * nry
    buf = hotpants_stamp_width(shape, nrx, nry, nsx, nsy, r, rss) // 2 if n > 1 else r
    for j in range(nry):
        for i in range(nrx):
            gx0, gy0 = i * xmax // nrx, j * ymax // nry
            gx1, gy1 = min((i + 1) * xmax // nrx, xmax), min((j + 1) * ymax // nry, ymax)
            good = (gx0, gx1, gy0, gy1)
            frame = (max(0, gx0 - buf), min(xmax, gx1 + buf), max(0, gy0 - buf), min(ymax, gy1 + buf))
            out.append((good, frame))
    return out

