"""Display arithmetic without Qt: display copies, limits (zscale, percentiles, symmetric) and stretches.

Stretches are applied to the colour look-up table, not to the pixels: the image
is drawn with linear levels and a 256-entry LUT whose entries are re-ordered by
the stretch (:func:`stretch_index`). Changing the stretch therefore costs a LUT
of 256 entries, not a pass over 16 million pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["STRETCHES", "LIMIT_MODES", "DisplayImage", "stretch_index", "sample", "robust_sigma"]

STRETCHES = ("linear", "sqrt", "asinh", "log")
#: Names of the limit modes offered in the GUI, in menu order.
LIMIT_MODES = ("zscale", "99.5%", "99%", "98%", "95%", "minmax")
_SAMPLE = 250_000


def sample(data: np.ndarray, n: int = _SAMPLE) -> np.ndarray:
    """A regular subsample of about ``n`` finite pixels (cheap on 10k x 10k images)."""
    step = max(1, int(np.sqrt(data.size / n)))
    s = np.asarray(data[::step, ::step], dtype=np.float64).ravel()
    return s[np.isfinite(s)]


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation (0 for no data)."""
    if values.size == 0:
        return 0.0
    med = np.median(values)
    return float(1.4826 * np.median(np.abs(values - med)))


def zscale(values: np.ndarray, contrast: float = 0.25) -> tuple[float, float]:
    """IRAF zscale limits of a 1-D sample (astropy's ZScaleInterval)."""
    from astropy.visualization import ZScaleInterval

    if values.size < 2:
        return _fallback(values)
    lo, hi = ZScaleInterval(contrast=contrast).get_limits(values)
    return _ordered(lo, hi, values)


def _fallback(values):
    if values.size == 0:
        return 0.0, 1.0
    v = float(values[0])
    return v - 0.5, v + 0.5


def _ordered(lo, hi, values):
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        lo, hi = float(np.min(values)), float(np.max(values))
        if hi <= lo:
            return lo - 0.5, lo + 0.5
    return lo, hi


def limits(values: np.ndarray, mode: str = "zscale") -> tuple[float, float]:
    """Display limits of a sample: ``'zscale'``, ``'minmax'`` or a percentage like ``'99.5%'``."""
    if values.size == 0:
        return 0.0, 1.0
    if mode == "zscale":
        return zscale(values)
    if mode == "minmax":
        return _ordered(np.min(values), np.max(values), values)
    if mode.endswith("%"):
        pct = float(mode[:-1])
        lo, hi = np.percentile(values, [(100 - pct) / 2, 100 - (100 - pct) / 2])
        return _ordered(lo, hi, values)
    raise ValueError(f"unknown limits mode {mode!r}; use one of {', '.join(LIMIT_MODES)}")


def symmetric_limits(values: np.ndarray, nsigma: float = 5.0) -> tuple[float, float]:
    """Limits ``(-a, a)`` centred on zero with ``a = nsigma`` robust sigmas (for diverging maps)."""
    s = robust_sigma(values)
    if not s > 0:
        s = float(np.max(np.abs(values))) if values.size else 1.0
    a = nsigma * (s or 1.0)
    return -a, a


def stretch_index(stretch: str, n: int = 256, diverging: bool = False) -> np.ndarray:
    """Indices into an ``n``-entry colour table realising a stretch on linear levels.

    Entry ``i`` of the returned array is the colour index used for a pixel that
    sits at fraction ``i/(n-1)`` between the levels. For ``diverging=True`` the
    stretch is applied symmetrically about the centre, so zero stays white and
    the sign of a residual is kept.
    """
    t = np.linspace(0.0, 1.0, n)
    if diverging:
        u = 2 * t - 1
        s = 0.5 + 0.5 * np.sign(u) * _stretch(np.abs(u), stretch)
    else:
        s = _stretch(t, stretch)
    return np.clip(np.rint(s * (n - 1)), 0, n - 1).astype(np.intp)


def _stretch(t, stretch):
    if stretch == "linear":
        return t
    if stretch == "sqrt":
        return np.sqrt(t)
    if stretch == "asinh":
        a = 0.1
        return np.arcsinh(t / a) / np.arcsinh(1 / a)
    if stretch == "log":
        a = 1000.0
        return np.log1p(a * t) / np.log1p(a)
    raise ValueError(f"unknown stretch {stretch!r}; use one of {', '.join(STRETCHES)}")


@dataclass
class DisplayImage:
    """A float32, NaN-free copy of an image for drawing, with its statistics cached.

    Made once per array (in the worker thread for results), so that drawing never
    touches the float64 data or NaNs.

    Attributes
    ----------
    data : numpy.ndarray
        float32 C-contiguous, non-finite pixels replaced by the median.
    source : numpy.ndarray
        The original array (values under the crosshair come from here).
    values : numpy.ndarray
        Finite subsample used for limits.
    """

    data: np.ndarray
    source: np.ndarray
    values: np.ndarray
    _limits: dict = field(default_factory=dict)
    _quantized: object = None

    @classmethod
    def from_array(cls, arr) -> "DisplayImage":
        arr = np.asarray(arr)
        vals = sample(arr)
        fill = np.float32(np.median(vals)) if vals.size else np.float32(0)
        disp = np.array(arr, dtype=np.float32, order="C", copy=True)
        bad = ~np.isfinite(disp)
        if bad.any():
            disp[bad] = fill
        return cls(disp, arr, vals)

    @property
    def shape(self):
        return self.data.shape

    @property
    def sky(self) -> float:
        """Median of the sample: the sky level that shared levels are offset by."""
        return float(np.median(self.values)) if self.values.size else 0.0

    def limits(self, mode: str = "zscale", symmetric: bool = False, nsigma: float = 5.0) -> tuple[float, float]:
        """Cached display limits (symmetric about 0 when ``symmetric``)."""
        key = ("sym", nsigma) if symmetric else mode
        if key not in self._limits:
            self._limits[key] = symmetric_limits(self.values, nsigma) if symmetric else limits(self.values, mode)
        return self._limits[key]

    def quantize(self, levels) -> np.ndarray:
        """uint8 image of the data mapped linearly from ``levels`` to 0..255, cached for those levels.

        Drawing a uint8 image with levels (0, 255) and a 256-entry LUT needs no per-pixel
        work in pyqtgraph, so computing this in a worker thread keeps the GUI thread free.
        """
        lo, hi = float(levels[0]), float(levels[1])
        if self._quantized is not None and self._quantized[0] == (lo, hi):
            return self._quantized[1]
        scale = np.float32(256.0 / (hi - lo)) if hi > lo else np.float32(0.0)
        tmp = np.subtract(self.data, np.float32(lo), dtype=np.float32)
        tmp *= scale
        np.clip(tmp, 0, 255, out=tmp)
        q = tmp.astype(np.uint8)
        self._quantized = ((lo, hi), q)
        return q

    def quantized_for(self, levels):
        """The cached uint8 image if it was made for ``levels``, else None."""
        if self._quantized is not None and self._quantized[0] == (float(levels[0]), float(levels[1])):
            return self._quantized[1]
        return None

    def value_at(self, x: float, y: float):
        """Pixel value of the original array at 0-based pixel centre ``(x, y)``, or None outside."""
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        if 0 <= iy < self.source.shape[0] and 0 <= ix < self.source.shape[1]:
            return float(self.source[iy, ix])
        return None


def shared_limits(images, mode: str = "zscale") -> tuple[float, float]:
    """Limits relative to each image's sky, from the union of the sky-subtracted samples.

    Science and template are drawn with the same intensity scale (the same ADU
    per grey level), each offset by its own sky: a template with a lower sky
    pedestal then looks like the science image instead of black. Add an
    image's :attr:`DisplayImage.sky` to get its levels.
    """
    vals = np.concatenate([im.values - im.sky for im in images if im is not None and im.values.size])
    return limits(vals, mode)
