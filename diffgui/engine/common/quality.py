"""A quality scorecard for a difference image (no Qt, no method package).

The scorecard says how good a subtraction is in numbers that have a known
ideal value, so that runs with different settings can be compared:

- ``robust_std``: robust standard deviation of ``D / noise`` (or ``S_corr``)
  over source-free pixels (ideal 1);
- ``peak_median`` and ``peak_p95``: median and 95th percentile of ``|D/noise|``
  at the peak pixels of bright, unsaturated, isolated template stars (ideal
  0.67 and 1.96, the values of ``|N(0, 1)|``);
- ``flux_left``: median over those stars of the aperture sum of ``D`` over the
  star's science flux (ideal 0);
- ``kernel_sum`` and ``kernel_sum_spread``: the kernel sum (flux scale) at the
  middle of the field and its relative range over a grid of positions;
- ``background_left``: the largest ``|median D/noise|`` of source-free pixels
  in a grid of tiles (ideal 0);
- ``candidates_per_mpix``: groups of pixels above 5 sigma per megapixel.

Stars that fit a kernel and stars that score it are disjoint:
:func:`prepare_stars` (:mod:`diffgui.engine.common.score_stars`) splits the template catalogue by a hash of each star's
position into a *fit* half (give it to the method as its object list) and a
*score* half (only these are scored), so that a score cannot be improved by
overfitting the stars it is measured on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from diffgui.engine.common.score_stars import (ISOLATION_LEVELS, MIN_SCORE_STARS,  # noqa: F401
                                               StarSets, prepare_stars, split_by_position,
                                               template_catalogue)
from diffgui.engine.errors import InputError

__all__ = ["StarSets", "Metric", "Scorecard", "split_by_position", "prepare_stars",
           "template_catalogue", "compute_scorecard", "robust_std", "header_cards", "METRIC_INFO"]

MAD_TO_STD = 1.482602218505602
#: Median of |N(0, 1)|: what a perfect subtraction leaves at any pixel.
HALF_NORMAL_MEDIAN = 0.6744897501960817

#: key -> (label, ideal text, test of a good value or None for information only).
METRIC_INFO = {
    "robust_std": ("Robust std of D/noise",
                   "Ideal 1.0: the noise map describes the difference. Below 0.8 the noise is "
                   "overestimated, above 1.25 something is left or the noise is underestimated.",
                   lambda v: 0.8 <= v <= 1.25),
    "peak_median": ("Median |D/noise| at star peaks",
                    "Ideal 0.67 (median of |N(0,1)|): stars subtract to noise. Above 1.0 the "
                    "kernel does not match the PSF (size, shape or spatial variation).",
                    lambda v: v <= 1.0),
    "peak_p95": ("95th percentile |D/noise| at star peaks",
                 "Ideal 1.96. Above 2.5 some part of the field or some stars are badly "
                 "subtracted: see the tile map.", lambda v: v <= 2.5),
    "flux_left": ("Fraction of star flux left",
                  "Ideal 0: median over scored stars of aperture D / star flux. A few per cent "
                  "either way means a misfit flux scale (kernel sum).",
                  lambda v: abs(v) <= 0.02),
    "kernel_sum": ("Kernel sum (flux scale)",
                   "The template-to-science flux ratio at the field centre; it should equal the "
                   "true ratio (photometric zero points).", None),
    "kernel_sum_spread": ("Kernel sum spread",
                          "(max - min) / median of the kernel sum over a grid of the field. Ideal: "
                          "the real transparency variation, usually under 0.1; more means the "
                          "flux scale wanders.", lambda v: v <= 0.1),
    "background_left": ("Background left",
                        "Largest |median D/noise| of source-free pixels over a grid of tiles. "
                        "Ideal 0; above 0.2 a background difference is not fitted (raise the "
                        "background order).", lambda v: v <= 0.2),
    "candidates_per_mpix": ("Candidates per megapixel",
                            "Groups of pixels above 5 sigma per megapixel. Ideal: only the real "
                            "transients (a few); tens mean residuals or wrong noise.",
                            lambda v: v <= 20.0),
}


@dataclass
class Metric:
    """One number of the scorecard with what ideal is."""

    key: str
    label: str
    value: float
    ideal: str
    ok: Optional[bool]

    def text(self) -> str:
        """The value formatted for a table cell."""
        if self.value is None or not np.isfinite(self.value):
            return "n/a"
        return "0" if abs(self.value) < 1e-9 else f"{self.value:.3g}"


@dataclass
class Scorecard:
    """The scorecard of one difference image.

    Attributes
    ----------
    metrics : dict
        :class:`Metric` by key (see :data:`METRIC_INFO`).
    tile_map : ndarray
        Median ``|D/noise|`` at scored star peaks per tile (row 0 = bottom of
        the image); NaN where a tile has fewer than 3 stars.
    kernel_sum_map : ndarray or None
        Kernel sum at the tile centres.
    n_stars : int
        Stars scored.
    normalised_by : str
        ``'noise'`` (D / noise map), ``'scorr'`` (ZOGY's S_corr) or
        ``'estimated'`` (D / its robust std: no noise map).
    warnings : list of str
        Why some numbers are missing.
    errors : dict
        Standard errors of the star scores from the scatter of the scored stars
        (``peak_median``, ``flux_left``): two runs whose scores differ by less
        are not told apart by these stars.
    """

    metrics: dict
    tile_map: np.ndarray
    kernel_sum_map: Optional[np.ndarray] = None
    n_stars: int = 0
    normalised_by: str = "noise"
    warnings: list = field(default_factory=list)
    errors: dict = field(default_factory=dict)

    def value(self, key: str) -> float:
        """The value of metric ``key`` (NaN when missing)."""
        m = self.metrics.get(key)
        return float("nan") if m is None or m.value is None else float(m.value)

    def flagged(self) -> list:
        """Keys of the metrics outside their good range."""
        return [k for k, m in self.metrics.items() if m.ok is False]

    def to_dict(self) -> dict:
        """JSON-compatible values (NaN becomes None), flags and counts."""
        vals = {k: (None if not np.isfinite(self.value(k)) else round(self.value(k), 5))
                for k in self.metrics}
        errs = {k: round(float(v), 6) for k, v in self.errors.items() if np.isfinite(v)}
        return {"metrics": vals, "flagged": self.flagged(), "n_stars": int(self.n_stars),
                "normalised_by": self.normalised_by, "warnings": list(self.warnings),
                "errors": errs}

    def header_cards(self) -> list:
        """``(keyword, value, comment)`` FITS cards (``QC*`` keywords)."""
        return header_cards(self.to_dict())


#: FITS keyword of each metric in the results header.
HEADER_KEYS = {"robust_std": "QCRSTD", "peak_median": "QCPKMED", "peak_p95": "QCPK95",
               "flux_left": "QCFLUXL", "kernel_sum": "QCKSUM", "kernel_sum_spread": "QCKSPRD",
               "background_left": "QCBKG", "candidates_per_mpix": "QCCANDMP"}


def header_cards(card: dict) -> list:
    """``(keyword, value, comment)`` FITS cards of a :meth:`Scorecard.to_dict` (empty for {})."""
    vals = (card or {}).get("metrics") or {}
    cards = [(kw, float(vals[key]), METRIC_INFO[key][0][:46]) for key, kw in HEADER_KEYS.items()
             if vals.get(key) is not None]
    if cards:
        cards.append(("QCNSTAR", int(card.get("n_stars", 0)), "stars scored (disjoint from fit)"))
        # 80-character card: 34 characters of flags leave room for the comment
        cards.append(("QCFLAGS", ",".join(card.get("flagged") or [])[:34] or "none",
                      "scores out of their good range"))
    return cards


def robust_std(values) -> float:
    """``1.4826 * MAD`` of the finite values (NaN when none)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(MAD_TO_STD * np.median(np.abs(v - np.median(v))))


#: Robust statistics (robust std, tile medians, valid area) are taken on a regular sub-grid
#: of about this many pixels (every ``k``-th row and column; all pixels up to 512^2). Their
#: sampling error: the robust std (MAD) of n samples has a relative standard error of
#: ~1.17 / sqrt(n) (0.3 % for the ~160 000 source-free samples of a 1024^2 frame); a tile
#: median of n samples ~1.25 / sqrt(n) sigma (0.012 sigma for 4 x 4 tiles at 1024^2).
SAMPLE_PIXELS = 1 << 18


def sample_step(shape) -> int:
    """Row and column step of the sub-grid the robust statistics use (see :data:`SAMPLE_PIXELS`)."""
    return max(1, int(math.sqrt(shape[0] * shape[1] / SAMPLE_PIXELS)))


def _normaliser(diff, noise, scorr, source_free, fill, step):
    """``zv(index) -> (z, valid)``: the difference in sigma and its validity at ``index`` (a
    slice pair or index arrays; nothing is computed for the whole frame), and what
    normalised it."""
    if scorr is not None:
        scorr = np.asarray(scorr)
        how = "scorr"

        def z_of(idx):
            return np.asarray(scorr[idx], dtype=float)
    elif noise is not None:
        noise = np.broadcast_to(np.asarray(noise), diff.shape)
        how = "noise"

        def z_of(idx):
            n = np.asarray(noise[idx], dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(n > 0, diff[idx] / n, np.nan)
    else:
        sub = diff[::step, ::step]
        good = np.isfinite(sub) & source_free[::step, ::step] & (sub != fill)
        scale = robust_std(sub[good])
        if not np.isfinite(scale) or scale <= 0:
            raise InputError("the difference has no usable pixels to score")
        how = "estimated"

        def z_of(idx):
            return np.asarray(diff[idx], dtype=float) / scale

    def zv(idx):
        z, d = z_of(idx), diff[idx]
        return z, np.isfinite(z) & np.isfinite(d) & (d != fill) & (z != 0.0)
    zv.scale = scale if how == "estimated" else None
    return zv, how


def _tile_medians(z, use, tiles, min_pixels=100) -> list:
    """Median of ``z[use]`` in each of ``tiles`` x ``tiles`` blocks (row ``y`` is in block
    ``y * tiles // height``) with at least ``min_pixels`` used pixels."""
    h, w = z.shape
    ey = [-(-j * h // tiles) for j in range(tiles + 1)]  # ceil(j h / tiles)
    ex = [-(-i * w // tiles) for i in range(tiles + 1)]
    out = []
    for j in range(tiles):
        for i in range(tiles):
            block = (slice(ey[j], ey[j + 1]), slice(ex[i], ex[i + 1]))
            vals = z[block][use[block]]
            if vals.size >= min_pixels:
                out.append(np.median(vals))
    return out


def _tile_index(x, y, shape, tiles):
    h, w = shape
    tx = np.clip((np.asarray(x, float) * tiles / w).astype(int), 0, tiles - 1)
    ty = np.clip((np.asarray(y, float) * tiles / h).astype(int), 0, tiles - 1)
    return ty, tx


def _flux_left(diff, zv, image, stars, fwhm):
    """Median over stars of aperture-summed D over the star's science flux (stars whose
    aperture is fully valid and that lie inside the frame; NaN with under 3), and its
    standard error."""
    if image is None or len(stars) == 0:
        return float("nan"), float("nan")
    r_ap, r_in, r_out = 1.5 * fwhm, 3.0 * fwhm, 4.0 * fwhm
    n = int(math.ceil(r_out))
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    rr = np.hypot(xx, yy).ravel()
    ap, ann = rr <= r_ap, (rr >= r_in) & (rr <= r_out)
    h, w = diff.shape
    cx = np.rint(np.asarray(stars["x"], float)).astype(int)
    cy = np.rint(np.asarray(stars["y"], float)).astype(int)
    inside = (cx - n >= 0) & (cx + n < w) & (cy - n >= 0) & (cy + n < h)
    if not inside.any():
        return float("nan"), float("nan")
    iy = cy[inside, None] + yy.ravel()[None, :]
    ix = cx[inside, None] + xx.ravel()[None, :]
    _, ok = zv((iy[:, ap], ix[:, ap]))
    d = np.asarray(diff[iy[:, ap], ix[:, ap]], dtype=float)
    im = np.asarray(image)
    flux = (np.sum(im[iy[:, ap], ix[:, ap]], axis=1, dtype=float)
            - np.median(im[iy[:, ann], ix[:, ann]], axis=1) * ap.sum())
    use = ok.all(axis=1) & (flux > 0)
    fractions = d[use].sum(axis=1) / flux[use]
    if fractions.size < 3:
        return float("nan"), float("nan")
    # standard error of a median: 1.2533 sigma / sqrt(n), sigma from the MAD of the stars
    err = 1.2533 * robust_std(fractions) / math.sqrt(fractions.size)
    return float(np.median(fractions)), float(err)


def _kernel_sums(kernel_sum, shape, tiles):
    """Kernel sum at the centre and on the tile centres (or NaNs)."""
    h, w = shape
    if kernel_sum is None:
        return float("nan"), None
    grid = np.empty((tiles, tiles))
    for j in range(tiles):
        for i in range(tiles):
            grid[j, i] = float(kernel_sum((i + 0.5) * w / tiles - 0.5, (j + 0.5) * h / tiles - 0.5))
    return float(kernel_sum(w / 2.0 - 0.5, h / 2.0 - 0.5)), grid


def _candidates(diff, noise, scorr, zv, threshold=5.0, min_pixels=3) -> int:
    """Groups of at least ``min_pixels`` valid pixels above ``threshold`` sigma (full frame)."""
    from scipy import ndimage

    src = scorr if scorr is not None else diff
    lim = (threshold if scorr is not None else threshold * zv.scale if noise is None
           else threshold * np.broadcast_to(np.asarray(noise), diff.shape))
    hi = np.empty(diff.shape, bool)
    step = max(1, (1 << 14) // max(diff.shape[1], 1))  # row blocks that stay in the cache
    with np.errstate(invalid="ignore"):
        for r0 in range(0, diff.shape[0], step):
            rows = slice(r0, r0 + step)
            a = np.abs(src[rows])
            np.greater(a, lim if np.isscalar(lim) else lim[rows], out=hi[rows])
    idx = np.nonzero(hi)
    z, ok = zv(idx)
    drop = ~(ok & (np.abs(z) > threshold))
    hi[idx[0][drop], idx[1][drop]] = False
    labels, n = ndimage.label(hi)
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int(np.count_nonzero(sizes >= min_pixels))


def _metric(key, value) -> Metric:
    label, ideal, test = METRIC_INFO[key]
    value = float(value) if value is not None else float("nan")
    ok = None if (test is None or not np.isfinite(value)) else bool(test(value))
    return Metric(key, label, value, ideal, ok)


def compute_scorecard(diff, stars: StarSets, noise=None, scorr=None, image=None,
                      kernel_sum: Optional[Callable[[float, float], float]] = None,
                      candidates=None, tiles: int = 4, fill: float = 1e-30) -> Scorecard:
    """Score a difference image.

    Parameters
    ----------
    diff : ndarray
        The difference image (science flux units).
    stars : StarSets
        From :func:`prepare_stars` on the same pair.
    noise : ndarray or float, optional
        Sigma map of ``diff``; without it and without ``scorr`` the difference
        is normalised by its own robust std (``normalised_by='estimated'``).
    scorr : ndarray, optional
        ZOGY's S_corr, used instead of ``diff / noise`` for the sigma scores.
    image : ndarray, optional
        The science image (for the fraction of flux left).
    kernel_sum : callable, optional
        ``kernel_sum(x, y)`` -> kernel sum at 0-based pixel ``(x, y)``.
    candidates : int or sequence, optional
        Candidates found by the run; default: 5-sigma groups counted here.
    tiles : int
        Tiles per side of the tile maps.
    fill : float
        Fill value of invalid difference pixels (HOTPANTS: 1e-30).

    Returns
    -------
    Scorecard
    """
    diff = np.asarray(diff)  # float32 stays float32: the frame is never copied to float64
    if diff.ndim != 2 or diff.shape != stars.source_free.shape:
        raise InputError(f"difference of shape {diff.shape} does not match the scored pair "
                         f"{stars.source_free.shape}")
    k = sample_step(diff.shape)
    grid = (slice(None, None, k), slice(None, None, k))
    zv, how = _normaliser(diff, noise, scorr, stars.source_free, fill, k)
    zs, vs = zv(grid)
    sf = vs & stars.source_free[grid]
    warnings = []
    rstd = robust_std(zs[sf]) if np.count_nonzero(sf) >= 100 else float("nan")
    s = stars.score
    px, py = np.asarray(s["px"], int), np.asarray(s["py"], int)
    zp, good = zv((py, px)) if len(s) else (np.zeros(0), np.zeros(0, bool))
    peaks = np.abs(zp[good])
    if peaks.size < 5:
        warnings.append(f"only {peaks.size} stars to score (need 5): star scores not computed")
        pmed = p95 = float("nan")
    else:
        pmed, p95 = float(np.median(peaks)), float(np.percentile(peaks, 95))
    ty, tx = _tile_index(px[good], py[good], diff.shape, tiles)
    tile_map = np.full((tiles, tiles), np.nan)
    for j in range(tiles):
        for i in range(tiles):
            sel = (ty == j) & (tx == i)
            if sel.sum() >= 3:
                tile_map[j, i] = np.median(peaks[sel])
    bg = _tile_medians(zs, sf, tiles)
    ks_centre, ks_map = _kernel_sums(kernel_sum, diff.shape, tiles)
    spread = float(np.ptp(ks_map) / abs(np.median(ks_map))) if ks_map is not None else float("nan")
    ncand = _candidates(diff, noise, scorr, zv) if candidates is None else (
        int(candidates) if np.isscalar(candidates) else len(candidates))
    area = max(np.count_nonzero(vs) * diff.size / vs.size, 1) / 1e6
    fleft, fleft_err = _flux_left(diff, zv, image, s[good], stars.fwhm)
    values = {"robust_std": rstd, "peak_median": pmed, "peak_p95": p95, "flux_left": fleft,
              "kernel_sum": ks_centre, "kernel_sum_spread": spread,
              "background_left": float(np.max(np.abs(bg))) if bg else float("nan"),
              "candidates_per_mpix": ncand / area}
    metrics = {k: _metric(k, v) for k, v in values.items()}
    errors = {"peak_median": 1.2533 * robust_std(peaks) / math.sqrt(peaks.size)
              if peaks.size >= 5 else float("nan"), "flux_left": fleft_err}
    return Scorecard(metrics, tile_map, ks_map, int(peaks.size), how, warnings, errors)
