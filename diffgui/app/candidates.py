"""Candidates on a subtraction result: finding, features, cutouts, labels and label files (no Qt).

Finding works on ZOGY's S_corr when the run has one, otherwise on the
difference image filtered with its PSF and normalised by its noise (the
matched-filter significance ``(D/sigma^2 * P) / sqrt(1/sigma^2 * P^2)``). Both
maps are rescaled by their robust sigma, so a threshold of 5 means 5 sigma of
the noise actually present. Peaks above the threshold are found on the positive
(brightening) and the negative (fading) side.

Every candidate carries the features a vetter uses: S/N, PSF-fit flux on the
difference, FWHM and ellipticity (Gaussian-weighted moments), distance to the
nearest template source, fractions of masked and negative pixels around it and
a dipole score (0 = one-signed, 1 = equal positive and negative lobes).

Labels and their files are in :mod:`diffgui.app.labels` (re-exported here).
Coordinates in tables are 0-based pixel centres.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from astropy.table import Table

from diffgui.engine.errors import InputError

from .labels import (LABELS, LabelStore, _float, _int, export_csv, export_regions, export_table,  # noqa: F401
                     labels_path_for, read_labels, user_data_dir, write_text_atomic)

__all__ = [
    "LABELS", "CUTOUT_ROLES", "COLUMNS", "CandidateSet", "VettingSource", "LabelStore",
    "find_candidates", "candidates_for_run", "candidates_for_run_isolated", "significance_map", "gaussian_psf", "cutout",
    "labels_path_for", "user_data_dir", "export_csv", "export_regions", "write_text_atomic",
]

#: Images cut out around each candidate, in display order.
CUTOUT_ROLES = ("science", "template", "diff", "scorr")
#: Columns of a candidate table, in order.
COLUMNS = ("id", "x", "y", "sign", "snr", "flux", "fluxerr", "fwhm", "ellipticity",
           "dist_template", "masked_frac", "neg_frac", "dipole", "flags", "ra", "dec")
#: One-line meaning of each column (tooltips, CSV documentation).
COLUMN_HELP = {
    "id": "candidate number, by decreasing S/N",
    "x": "x of the peak, 0-based pixel", "y": "y of the peak, 0-based pixel",
    "sign": "+1 brightening (positive in the difference), -1 fading",
    "snr": "significance of the peak (S_corr, or matched-filter S/N of the difference)",
    "flux": "PSF-fit flux on the difference (signed)", "fluxerr": "error of flux",
    "fwhm": "FWHM of the difference source (px)", "ellipticity": "1 - b/a",
    "dist_template": "distance to the nearest template source (px); NaN = none within 30 px",
    "masked_frac": "fraction of masked or non-finite pixels in the box around it",
    "neg_frac": "fraction of pixels of the opposite sign in the box around it",
    "dipole": "0 = one-signed source, 1 = equal positive and negative lobes",
    "flags": "0x8 near the edge, 0x100 masked pixels nearby",
    "ra": "right ascension (deg)", "dec": "declination (deg)",
}
FLAG_EDGE = 0x8
FLAG_MASKED = 0x100

_FWHM_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


# ---- PSF helpers -------------------------------------------------------------------------

def _gauss1d(fwhm: float, size: Optional[int] = None) -> np.ndarray:
    fwhm = float(fwhm)
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise InputError(f"PSF FWHM must be a positive number of pixels, got {fwhm!r}")
    s = fwhm / _FWHM_SIGMA
    if size is None:
        size = 2 * int(np.ceil(3.0 * s)) + 1
    h = size // 2
    g = np.exp(-np.arange(-h, h + 1) ** 2 / (2 * s * s))
    return g / g.sum()


def gaussian_psf(fwhm: float, size: Optional[int] = None) -> np.ndarray:
    """A centred, odd-sized Gaussian stamp of ``fwhm`` pixels normalised to sum 1."""
    g = _gauss1d(fwhm, size)
    return np.outer(g, g)


def _psf_stamp(psf) -> Optional[np.ndarray]:
    """A usable odd-sized, normalised PSF stamp from a run's ``psf`` output, or None."""
    if psf is None:
        return None
    p = np.asarray(psf, dtype=float)
    if p.ndim != 2 or p.shape[0] > 101 or p.shape[1] > 101 or not np.isfinite(p).all():
        return None
    if p.shape[0] % 2 == 0:
        p = np.pad(p, ((0, 1), (0, 0)))
    if p.shape[1] % 2 == 0:
        p = np.pad(p, ((0, 0), (0, 1)))
    total = p.sum()
    return p / total if total > 0 else None


def _stamp_fwhm(p: np.ndarray) -> Optional[float]:
    """FWHM of a PSF stamp from its second moments (Gaussian equivalent)."""
    q = np.clip(p, 0, None)
    if q.sum() <= 0:
        return None
    yy, xx = np.indices(q.shape, dtype=float)
    t = q.sum()
    cx, cy = (q * xx).sum() / t, (q * yy).sum() / t
    var = 0.5 * ((q * (xx - cx) ** 2).sum() + (q * (yy - cy) ** 2).sum()) / t
    return float(_FWHM_SIGMA * np.sqrt(var)) if var > 0 else None


class _Prepared:
    """An image made ready for sep once: bad pixels zeroed and masked, background removed."""

    def __init__(self, image, mask=None):
        from diffgui.engine.errors import as_image, as_mask
        from diffgui.engine.common.noise import estimate_background

        img = as_image(image)
        bad = ~np.isfinite(img)
        m = as_mask(mask, img.shape)
        if m is not None:
            bad |= m
        self.bad = bad
        self.usable = not bad.all()
        clean = np.where(bad, 0.0, img)
        bkg = estimate_background(clean, mask=bad) if self.usable else None
        self.sub = np.ascontiguousarray(clean - bkg.back) if self.usable else clean
        self.rms = np.ascontiguousarray(bkg.rms) if self.usable else np.ones_like(clean)

    def objects(self, thresh: float, region=None):
        """sep objects above ``thresh`` sigma (in ``region`` = (y0, y1, x0, x1) only); None on failure."""
        import sep

        if not self.usable:
            return None
        y0, y1, x0, x1 = region or (0, self.sub.shape[0], 0, self.sub.shape[1])
        sub = np.ascontiguousarray(self.sub[y0:y1, x0:x1])
        try:
            obj = sep.extract(sub, thresh, err=np.ascontiguousarray(self.rms[y0:y1, x0:x1]),
                              mask=np.ascontiguousarray(self.bad[y0:y1, x0:x1]), minarea=5)
        except Exception:  # sep refuses pathological images (pixel stack full ...)
            return None
        return obj


def _as_prepared(image, mask=None) -> Optional[_Prepared]:
    if image is None:
        return None
    return image if isinstance(image, _Prepared) else _Prepared(image, mask)


def estimate_fwhm(image, mask=None) -> Optional[float]:
    """Median FWHM (twice the half-light radius) of the brightest clean objects in the central
    1024 x 1024 pixels (plenty of stars, and cheap on 10k x 10k frames), or None."""
    import sep

    prep = _as_prepared(image, mask)
    ny, nx = prep.sub.shape
    y0, x0 = max(0, ny // 2 - 512), max(0, nx // 2 - 512)
    region = (y0, min(ny, y0 + 1024), x0, min(nx, x0 + 1024))
    obj = prep.objects(10.0, region)
    if obj is None or len(obj) < 3:
        return None
    clean = np.nonzero(obj["flag"] == 0)[0]
    sel = clean[np.argsort(-obj["flux"][clean])][:60]
    if sel.size < 3:
        return None
    sub = np.ascontiguousarray(prep.sub[region[0]:region[1], region[2]:region[3]])
    rmax = np.clip(6.0 * np.sqrt(obj["a"][sel] * obj["b"][sel]), 3.0, 30.0)
    r, fl = sep.flux_radius(sub, obj["x"][sel], obj["y"][sel], rmax, 0.5, subpix=5)
    good = (fl == 0) & np.isfinite(r) & (r > 0.4)
    if good.sum() < 3:
        return None
    return float(np.median(2.0 * r[good]))


# ---- significance -------------------------------------------------------------------------

def _robust_sigma(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    med = np.median(values)
    return float(1.4826 * np.median(np.abs(values - med)))


def _separable(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Correlate with ``outer(g, g)`` (zero outside the image), as two 1-D passes."""
    from scipy import ndimage

    out = ndimage.correlate1d(a, g, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, g, axis=1, mode="constant", cval=0.0)


def significance_map(diff, noise=None, psf=None, mask=None, fwhm=None):
    """Matched-filter significance, PSF-fit flux and flux error maps of a difference image.

    Parameters
    ----------
    diff : ndarray
        The difference image.
    noise : ndarray or float, optional
        Its noise (sigma) map; default: the background RMS of ``diff``.
    psf : ndarray, optional
        Odd-sized PSF stamp normalised to sum 1.
    mask : ndarray of bool, optional
        True = bad; such pixels get zero weight.
    fwhm : float, optional
        Without ``psf``: a Gaussian PSF of this FWHM, applied as two 1-D passes (exactly
        :func:`gaussian_psf`, several times faster than an FFT on large images).

    Returns
    -------
    snr, flux, fluxerr : ndarray
        ``flux`` is the PSF-fit flux of a point source centred on each pixel,
        ``fluxerr`` its error and ``snr = flux / fluxerr``; all 0 where no
        unmasked pixel contributes.
    """
    from scipy.signal import fftconvolve  # no FFTW planning: small images stay cheap

    from diffgui.engine.common.noise import estimate_background

    d = np.asarray(diff, dtype=np.float64)
    bad = ~np.isfinite(d)
    if mask is not None:
        bad |= np.asarray(mask, bool)
    if noise is None:
        noise = estimate_background(np.where(bad, 0.0, d), mask=bad).rms
    sig = np.broadcast_to(np.asarray(noise, dtype=np.float64), d.shape)
    badn = ~np.isfinite(sig) | (sig <= 0)
    bad = bad | badn
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(bad, 0.0, 1.0 / np.where(badn, 1.0, sig) ** 2)
    dw = np.where(bad, 0.0, d) * w
    if psf is None:
        if fwhm is None:
            raise InputError("significance_map needs a PSF stamp or its FWHM")
        g = _gauss1d(fwhm)
        num = _separable(dw, g)
        den = _separable(w, g * g)
    else:
        pf = np.asarray(psf, dtype=np.float64)[::-1, ::-1]  # correlation = convolution with the flipped PSF
        num = fftconvolve(dw, pf, mode="same")
        den = fftconvolve(w, pf * pf, mode="same")
    ok = den > 1e-12 * max(float(den.max()), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = np.where(ok, num / np.where(ok, den, 1.0), 0.0)
        fluxerr = np.where(ok, 1.0 / np.sqrt(np.where(ok, den, 1.0)), 0.0)
        snr = np.where(ok, num * fluxerr, 0.0)
    return snr, flux, fluxerr


# ---- cutouts ------------------------------------------------------------------------------

def cutout(arr, x: float, y: float, size: int = 31) -> np.ndarray:
    """A ``size x size`` float32 stamp of ``arr`` centred on pixel ``(x, y)``, NaN outside."""
    size = int(size)
    out = np.full((size, size), np.nan, dtype=np.float32)
    if arr is None:
        return out
    ny, nx = arr.shape
    cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    h = size // 2
    x0, y0 = cx - h, cy - h
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(nx, x0 + size), min(ny, y0 + size)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


# ---- sources of things to vet -------------------------------------------------------------

class VettingSource:
    """What the vetting view shows: a table of items with cutouts, keys and positions.

    Subclasses set :attr:`table` (one row per item), :attr:`roles` (cutout names in
    display order) and implement :meth:`cutouts`. :class:`CandidateSet` (candidates on
    a pair) and :class:`diffgui.app.collections.CutoutCollection` are the two kinds.
    """

    table: Table
    roles: tuple = CUTOUT_ROLES
    title: str = ""
    #: Column holding a machine score (collections), or None.
    score_column: Optional[str] = None
    #: Columns shown in the vetting table, in order.
    display_columns: tuple = ()

    def __len__(self) -> int:
        return len(self.table)

    def key(self, i: int) -> str:
        """Stable identifier of item ``i`` for its label."""
        raise NotImplementedError

    def keys(self) -> list:
        return [self.key(i) for i in range(len(self))]

    def position(self, i: int) -> Optional[tuple]:
        """``(x, y)`` of item ``i`` in the pair's images, or None (collections)."""
        return None

    def cutouts(self, i: int, size: Optional[int] = None) -> dict:
        """``{role: 2-D array}`` for item ``i``."""
        raise NotImplementedError

    def record(self, i: int) -> dict:
        """Identification stored with a label (x, y, ra, dec, sign, snr, score)."""
        return {}

    def match(self, records: dict) -> dict:
        """Map stored label keys to this source's keys (default: identical keys)."""
        mine = set(self.keys())
        return {k: k for k in records if k in mine}


@dataclass
class CandidateSet(VettingSource):
    """Candidates found on one subtraction result.

    Attributes
    ----------
    table : astropy.table.Table
        One row per candidate with :data:`COLUMNS`, brightest S/N first.
    images : dict
        ``{'science', 'template', 'diff', 'scorr'}`` arrays the cutouts come from
        (missing roles are left out).
    meta : dict
        How they were found: ``detection`` ('scorr' or 'diff'), ``threshold``,
        ``noise_scale`` (robust sigma of the raw map), ``fwhm``, ``shape``, method,
        preset hash.
    wcs : astropy.wcs.WCS or None
    cutout_size : int
    """

    table: Table
    images: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    wcs: object = None
    cutout_size: int = 31
    title: str = "candidates"
    display_columns: tuple = ("id", "snr", "sign", "x", "y", "flux", "fwhm", "ellipticity",
                              "dist_template", "dipole", "neg_frac", "masked_frac")

    @property
    def roles(self) -> tuple:
        return tuple(r for r in CUTOUT_ROLES if self.images.get(r) is not None)

    def key(self, i: int) -> str:
        r = self.table[i]
        return _position_key(r["x"], r["y"], r["sign"])

    def position(self, i: int) -> tuple:
        r = self.table[i]
        return float(r["x"]), float(r["y"])

    def cutouts(self, i: int, size: Optional[int] = None) -> dict:
        x, y = self.position(i)
        size = int(size or self.cutout_size)
        return {role: cutout(self.images[role], x, y, size) for role in self.roles}

    def record(self, i: int) -> dict:
        r = self.table[i]
        return {"x": float(r["x"]), "y": float(r["y"]), "ra": float(r["ra"]), "dec": float(r["dec"]),
                "sign": int(r["sign"]), "snr": float(r["snr"])}

    def match(self, records: dict, radius: float = 1.5) -> dict:
        """Stored labels to current candidates: same sign, nearest within ``radius`` px."""
        if len(self) == 0 or not records:
            return {}
        from scipy.spatial import cKDTree
        x = np.asarray(self.table["x"], float)
        y = np.asarray(self.table["y"], float)
        s = np.asarray(self.table["sign"], int)
        keys = self.keys()
        out, taken = {}, set()
        for sign in (1, -1):
            sel = np.nonzero(s == sign)[0]
            if sel.size == 0:
                continue
            tree = cKDTree(np.column_stack([x[sel], y[sel]]))
            for k, rec in records.items():
                rx, ry, rs = _float(rec.get("x")), _float(rec.get("y")), rec.get("sign")
                if not (np.isfinite(rx) and np.isfinite(ry)) or _int(rs, 0) != sign:
                    continue
                d, j = tree.query([rx, ry])
                if d <= radius and keys[sel[j]] not in taken:
                    out[k] = keys[sel[j]]
                    taken.add(keys[sel[j]])
        return out


def _position_key(x, y, sign) -> str:
    return f"{float(x):.2f}_{float(y):.2f}_{'+' if int(sign) >= 0 else '-'}"


# ---- finding ------------------------------------------------------------------------------

def _source_mask(preps, fwhm: float) -> Optional[np.ndarray]:
    """Pixels near sources of any of the prepared images (box-smoothed excess over 3 sigma,
    grown by 1 FWHM); None when no image is given."""
    from scipy import ndimage

    out = None
    box = max(3, int(round(fwhm)))
    for prep in preps:
        if prep is None or not prep.usable:
            continue
        excess = ndimage.uniform_filter(prep.sub / np.where(prep.rms > 0, prep.rms, np.inf), size=box)
        src = excess > 3.0 / box  # 3 sigma of the box mean
        out = src if out is None else (out | src)
    if out is None:
        return None
    return ndimage.binary_dilation(out, iterations=max(2, int(round(fwhm))))


_STATS_SIZE = 2048


def _central(shape, size: int):
    """Slices of the central ``size x size`` region (the whole image when smaller)."""
    ny, nx = shape
    y0, x0 = max(0, (ny - size) // 2), max(0, (nx - size) // 2)
    return slice(y0, min(ny, y0 + size)), slice(x0, min(nx, x0 + size))


def _window(a, bad, x: int, y: int, r: int) -> np.ndarray:
    """``(2r+1)^2`` float copy of ``a`` around pixel (x, y); NaN outside the image and where ``bad``."""
    ny, nx = a.shape
    out = np.full((2 * r + 1, 2 * r + 1), np.nan)
    x0, x1, y0, y1 = max(0, x - r), min(nx, x + r + 1), max(0, y - r), min(ny, y + r + 1)
    sub = np.where(bad[y0:y1, x0:x1], np.nan, a[y0:y1, x0:x1])
    out[y0 - (y - r):y1 - (y - r), x0 - (x - r):x1 - (x - r)] = sub
    return out


def _peaks(t: np.ndarray, threshold: float, radius: int, valid: np.ndarray):
    """Local maxima of ``t`` above ``threshold`` at least ``radius`` px apart (strongest first).

    ``t`` must be 0 on invalid pixels (so they never win against a positive peak). Only the
    pixels above the threshold are examined, so the cost follows the signal, not the image.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    ys, xs = np.nonzero((t > threshold) & valid)
    if ys.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    ny, nx = t.shape
    if ys.size > 200_000:  # a failed subtraction: one pass over the image is cheaper
        mx = ndimage.maximum_filter(t, size=2 * radius + 1, mode="constant", cval=-np.inf)
        keep = t[ys, xs] >= mx[ys, xs]
    else:
        keep = np.zeros(ys.size, bool)
        for i, (y, x) in enumerate(zip(ys, xs)):
            win = t[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
            keep[i] = t[y, x] >= win.max()
    ys, xs = ys[keep], xs[keep]
    order = np.argsort(-t[ys, xs], kind="stable")
    ys, xs = ys[order], xs[order]
    if ys.size > 1:  # equal maxima on a plateau: keep the first of each group
        pairs = cKDTree(np.column_stack([xs, ys])).query_pairs(radius, output_type="ndarray")
        drop = np.zeros(ys.size, bool)
        for i, j in sorted(map(tuple, np.sort(pairs, axis=1))):
            if not drop[i]:
                drop[j] = True
        ys, xs = ys[~drop], xs[~drop]
    return ys, xs


def _local_flux(d, w, psf, xs, ys):
    """PSF-fit flux and error of point sources centred on pixels ``(xs, ys)`` (weights ``w``)."""
    h0, h1 = psf.shape[0] // 2, psf.shape[1] // 2
    dpad = np.pad(np.where(w > 0, d, 0.0) * w, ((h0, h0), (h1, h1)))
    wpad = np.pad(w, ((h0, h0), (h1, h1)))
    p2 = psf * psf
    flux = np.zeros(len(xs))
    err = np.zeros(len(xs))
    for i, (x, y) in enumerate(zip(xs, ys)):
        num = float((psf * dpad[y:y + 2 * h0 + 1, x:x + 2 * h1 + 1]).sum())
        den = float((p2 * wpad[y:y + 2 * h0 + 1, x:x + 2 * h1 + 1]).sum())
        if den > 0:
            flux[i], err[i] = num / den, 1.0 / np.sqrt(den)
    return flux, err


def _template_distances(template, tmask, fx, fy, radius: int = 30) -> np.ndarray:
    """Distance from each position to the nearest template source within ``radius`` px
    (sep, 5 sigma, robust local sky), NaN when there is none."""
    import sep

    t = np.asarray(template, dtype=np.float64)
    out = np.full(len(fx), np.nan)
    # sep allocates its process-wide pixel stack (1e6 px, set by the engine) on every call:
    # 20-40 ms per stamp; a stack the size of one stamp makes each call ~1 ms. (An
    # extraction of the engine in another thread meanwhile grows the stack again itself.)
    stack = sep.get_extract_pixstack()
    sep.set_extract_pixstack(max(4096, (2 * radius + 1) ** 2))
    try:
        _stamp_distances(t, tmask, fx, fy, radius, out)
    finally:
        sep.set_extract_pixstack(stack)
    return out


def _stamp_distances(t, tmask, fx, fy, radius, out) -> None:
    import sep

    ny, nx = t.shape
    for i, (x, y) in enumerate(zip(fx, fy)):
        cx, cy = int(round(x)), int(round(y))
        x0, x1 = max(0, cx - radius), min(nx, cx + radius + 1)
        y0, y1 = max(0, cy - radius), min(ny, cy + radius + 1)
        stamp = t[y0:y1, x0:x1]
        bad = ~np.isfinite(stamp)
        if tmask is not None:
            bad |= tmask[y0:y1, x0:x1]
        good = stamp[~bad]
        if good.size < 25:
            continue
        med = float(np.median(good))
        rms = float(1.4826 * np.median(np.abs(good - med)))
        if not rms > 0:
            continue
        sub = np.ascontiguousarray(np.where(bad, 0.0, stamp - med))
        try:
            obj = sep.extract(sub, 5.0, err=rms, mask=np.ascontiguousarray(bad), minarea=5)
        except Exception:  # a pathological stamp: no answer rather than no candidates
            continue
        if len(obj):
            dd = np.hypot(obj["x"] + x0 - x, obj["y"] + y0 - y)
            if dd.min() <= radius:
                out[i] = float(dd.min())


def _subpixel(t: np.ndarray, ys, xs):
    """Parabolic refinement of peak positions (at most half a pixel)."""
    ny, nx = t.shape
    fx = xs.astype(float)
    fy = ys.astype(float)
    for i, (y, x) in enumerate(zip(ys, xs)):
        if 0 < x < nx - 1:
            a, b, c = t[y, x - 1], t[y, x], t[y, x + 1]
            den = a - 2 * b + c
            if den < 0:
                fx[i] = x + float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
        if 0 < y < ny - 1:
            a, b, c = t[y - 1, x], t[y, x], t[y + 1, x]
            den = a - 2 * b + c
            if den < 0:
                fy[i] = y + float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return fx, fy


def _moments_shape(v: np.ndarray, dx: np.ndarray, dy: np.ndarray, s_w: float):
    """FWHM and ellipticity of a one-signed stamp from Gaussian-weighted moments."""
    wgt = np.exp(-(dx * dx + dy * dy) / (2 * s_w * s_w))
    i = np.clip(v, 0, None) * wgt
    t = i.sum()
    if not np.isfinite(t) or t <= 0:
        return np.nan, np.nan
    cx, cy = (i * dx).sum() / t, (i * dy).sum() / t
    mxx = (i * (dx - cx) ** 2).sum() / t
    myy = (i * (dy - cy) ** 2).sum() / t
    mxy = (i * (dx - cx) * (dy - cy)).sum() / t
    cm = np.array([[mxx, mxy], [mxy, myy]])
    try:
        # Undo the window: C^-1 = Cm^-1 - W^-1 for Gaussian source and window.
        c_inv = np.linalg.inv(cm) - np.eye(2) / (s_w * s_w)
        lam = np.linalg.eigvalsh(c_inv)
    except np.linalg.LinAlgError:
        return np.nan, np.nan
    if lam.min() <= 0:
        return np.nan, np.nan
    a, b = 1.0 / np.sqrt(lam.min()), 1.0 / np.sqrt(lam.max())
    return float(_FWHM_SIGMA * np.sqrt(a * b)), float(1.0 - b / a)


def _radec(wcs, fx, fy) -> tuple:
    """RA and Dec (deg) of 0-based pixel positions; NaN without a (working) WCS."""
    ra = np.full(len(fx), np.nan)
    dec = np.full(len(fx), np.nan)
    if wcs is not None and len(fx):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                world = wcs.all_pix2world(np.column_stack([fx, fy]), 0)
            ra, dec = world[:, 0].astype(float), world[:, 1].astype(float)
        except Exception:  # a broken WCS must not stop vetting in pixels
            pass
    return ra, dec


def find_candidates(diff, *, scorr=None, noise=None, psf=None, fwhm=None, image=None, template=None,
                    mask=None, template_mask=None, threshold: float = 5.0, signs=(1, -1),
                    edge: float = 3.0, template_objects=None, renormalise: Optional[bool] = None,
                    max_candidates: int = 5000, wcs=None, cutout_size: int = 31) -> CandidateSet:
    """Find positive and negative candidates on a difference image.

    Parameters
    ----------
    diff : ndarray
        Difference image.
    scorr : ndarray, optional
        ZOGY's S_corr: when given, peaks are found on it instead of on the
        matched-filtered difference.
    noise : ndarray or float, optional
        Noise (sigma) of ``diff``; default: its background RMS.
    psf : ndarray, optional
        PSF stamp of the difference; default: a Gaussian of ``fwhm``.
    fwhm : float, optional
        PSF FWHM in pixels; default: measured on ``psf`` or ``image``, else 3.
    image, template : ndarray, optional
        Science and template images (for cutouts, the FWHM and template sources).
    mask, template_mask : ndarray of bool, optional
        True = bad pixel.
    threshold : float
        Detection threshold in sigma of the (renormalised) significance map.
    signs : tuple
        ``(1, -1)`` both, ``(1,)`` brightening only, ``(-1,)`` fading only.
    edge : float
        Peaks closer than this to the border are dropped.
    template_objects : astropy.table.Table, optional
        Template sources (x, y) for ``dist_template``; default: sources detected on
        ``template`` within 30 px of each candidate.
    renormalise : bool or None
        Divide the significance map by its robust sigma over source-free pixels. None
        (default): always for the matched-filter difference (noise maps usually ignore the
        correlated noise of a convolved image), and for S_corr only when that sigma is more
        than 15 % off 1 (ZOGY's S_corr is already in sigma; near stars its astrometric term
        damps it, which must not be mistaken for a wrong normalisation).
    max_candidates : int
        Keep at most this many (the most significant).
    wcs : astropy.wcs.WCS, optional
        For the ra/dec columns.

    Returns
    -------
    CandidateSet
    """
    from scipy.spatial import cKDTree

    from diffgui.engine.errors import as_image, as_mask

    d = as_image(diff, "difference image")
    shape = d.shape
    m = as_mask(mask, shape, "mask")
    tm = as_mask(template_mask, shape, "template_mask")
    bad = ~np.isfinite(d)
    for extra in (m, tm):
        if extra is not None:
            bad |= extra
    if bad.all():
        raise InputError("every pixel of the difference image is masked or not finite: nothing to search.")
    if not (np.isfinite(threshold) and threshold > 0):
        raise InputError(f"candidate threshold must be a positive number of sigma, got {threshold!r}")

    p = _psf_stamp(psf)
    # Statistics (FWHM, sky sigma) come from the central region: plenty of pixels and
    # stars, and cheap on 10k x 10k frames.
    cy, cx = _central(shape, _STATS_SIZE)
    sci_prep = None if image is None else _Prepared(np.asarray(image)[cy, cx], None if m is None else m[cy, cx])
    tmpl_prep = None if template is None else _Prepared(np.asarray(template)[cy, cx],
                                                         None if tm is None else tm[cy, cx])
    if fwhm is None:
        fwhm = _stamp_fwhm(p) if p is not None else None
        if fwhm is None and sci_prep is not None:
            fwhm = estimate_fwhm(sci_prep)
        fwhm = float(fwhm) if fwhm else 3.0
    fwhm = float(np.clip(fwhm, 1.0, 30.0))
    if noise is not None and np.ndim(noise) == 2:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != shape:
            raise InputError(f"noise map has shape {noise.shape} but the difference has shape {shape}")
    if noise is None:
        from diffgui.engine.common.noise import estimate_background

        noise = estimate_background(np.where(bad, 0.0, d), mask=bad).rms
    pix_noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), shape)
    badn = ~np.isfinite(pix_noise) | (pix_noise <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(bad | badn, 0.0, 1.0 / np.where(badn, 1.0, pix_noise) ** 2)

    if scorr is not None:
        s = as_image(scorr, "S_corr")
        if s.shape != shape:
            raise InputError(f"S_corr has shape {s.shape} but the difference has shape {shape}")
        det = np.where(bad | ~np.isfinite(s), 0.0, s)
        detection = "scorr"
    else:
        det, flux_map, fluxerr_map = significance_map(d, pix_noise, p, bad, fwhm=fwhm)
        detection = "diff"
    valid = ~bad & (det != 0)
    scale = s0 = 1.0
    if renormalise or renormalise is None:
        # Sigma of the empty sky only: around stars S_corr is damped by its astrometric
        # term and the difference carries residuals, both of which bias a global MAD.
        src = _source_mask((sci_prep, tmpl_prep), fwhm)
        dc, vc = det[cy, cx], valid[cy, cx]
        quiet = vc if src is None else vc & ~src
        if quiet.sum() < 0.1 * vc.sum():
            quiet = vc
        step = max(1, int(np.sqrt(dc.size / 250_000)))
        s0 = _robust_sigma(dc[::step, ::step][quiet[::step, ::step]])
        if s0 > 0 and np.isfinite(s0):
            scale = s0
        if renormalise is None and detection == "scorr" and abs(scale - 1.0) <= 0.15:
            scale = 1.0
    if scale != 1.0:
        det = det / scale

    radius = max(1, int(round(fwhm)))
    ys_all, xs_all, sg_all = [], [], []
    for sign in signs:
        ys, xs = _peaks(det if sign > 0 else -det, threshold, radius, valid)
        ys_all.append(ys)
        xs_all.append(xs)
        sg_all.append(np.full(ys.size, int(np.sign(sign)), int))
    ys = np.concatenate(ys_all)
    xs = np.concatenate(xs_all)
    sg = np.concatenate(sg_all)
    ny, nx = shape
    if edge and edge > 0:
        keep = (xs >= edge) & (ys >= edge) & (xs <= nx - 1 - edge) & (ys <= ny - 1 - edge)
        ys, xs, sg = ys[keep], xs[keep], sg[keep]
    snr = np.abs(det[ys, xs])
    order = np.argsort(-snr, kind="stable")[:int(max_candidates)]
    ys, xs, sg, snr = ys[order], xs[order], sg[order], snr[order]
    n = ys.size
    fx = np.empty(n)
    fy = np.empty(n)
    for sign in (1, -1):
        sel = sg == sign
        if sel.any():
            fx[sel], fy[sel] = _subpixel(det if sign > 0 else -det, ys[sel], xs[sel])
    if detection == "diff":
        flux, fluxerr = flux_map[ys, xs], fluxerr_map[ys, xs] * scale
    else:
        flux, fluxerr = _local_flux(d, weight, p if p is not None else gaussian_psf(fwhm), xs, ys)

    # Features.
    h = max(2, int(round(0.75 * fwhm)))
    rr = max(3, int(np.ceil(2.0 * fwhm)))
    yy, xx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    disk = (xx * xx + yy * yy) <= rr * rr
    s_w = 1.5 * fwhm / _FWHM_SIGMA
    fw = np.full(n, np.nan)
    ell = np.full(n, np.nan)
    masked_frac = np.zeros(n)
    neg_frac = np.zeros(n)
    dipole = np.zeros(n)
    flags = np.zeros(n, np.int32)
    for i in range(n):
        x, y, sign = xs[i], ys[i], sg[i]
        v = sign * _window(d, bad, x, y, rr)
        sn = _window(pix_noise, badn, x, y, rr)
        box = v[rr - h:rr + h + 1, rr - h:rr + h + 1]
        finite = np.isfinite(box)
        masked_frac[i] = 1.0 - finite.mean()
        neg_frac[i] = float((box[finite] < 0).mean()) if finite.any() else 0.0
        good = disk & np.isfinite(v) & np.isfinite(sn)
        if good.any():
            vv, ss = v[good], sn[good]
            pos = vv[vv > 2 * ss].sum()
            neg = -vv[vv < -2 * ss].sum()
            dipole[i] = min(pos, neg) / max(pos, neg) if min(pos, neg) > 0 else 0.0
            vz = np.where(good, v, 0.0)
            fw[i], ell[i] = _moments_shape(vz, xx + (x - fx[i]), yy + (y - fy[i]), s_w)
        if masked_frac[i] > 0:
            flags[i] |= FLAG_MASKED
        if min(fx[i], fy[i], nx - 1 - fx[i], ny - 1 - fy[i]) < 2 * fwhm:
            flags[i] |= FLAG_EDGE

    dist = np.full(n, np.nan)
    if n and template_objects is not None:
        if len(template_objects):
            tree = cKDTree(np.column_stack([np.asarray(template_objects["x"], float),
                                            np.asarray(template_objects["y"], float)]))
            dist, _ = tree.query(np.column_stack([fx, fy]))
    elif n and template is not None:
        dist = _template_distances(template, tm, fx, fy)
    ra, dec = _radec(wcs, fx, fy)
    table = Table({
        "id": np.arange(1, n + 1, dtype=np.int32), "x": fx, "y": fy, "sign": sg.astype(np.int32),
        "snr": snr.astype(float), "flux": flux.astype(float), "fluxerr": fluxerr.astype(float),
        "fwhm": fw, "ellipticity": ell, "dist_template": np.asarray(dist, float),
        "masked_frac": masked_frac, "neg_frac": neg_frac, "dipole": dipole, "flags": flags,
        "ra": ra, "dec": dec,
    })
    images = {"science": image, "template": template, "diff": d, "scorr": scorr}
    images = {k: v for k, v in images.items() if v is not None}
    meta = {"detection": detection, "threshold": float(threshold), "noise_scale": float(scale),
            "sky_sigma": float(s0),
            "fwhm": fwhm, "shape": list(shape), "signs": [int(s) for s in signs]}
    table.meta.update(meta)
    return CandidateSet(table, images, meta, wcs, int(cutout_size))


def _run_inputs(run, pair, kwargs) -> tuple:
    """The difference and the :func:`find_candidates` keywords for a run of ``pair``."""
    res = run.results if hasattr(run, "results") else dict(run)
    diff = res.get("diff")
    if diff is None:
        raise InputError("this run has no difference image: run a subtraction first.")
    noise = res.get("noise")
    if noise is None and isinstance(pair.err, np.ndarray) and isinstance(pair.template_err, np.ndarray):
        noise = np.hypot(pair.err, pair.template_err)
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != np.shape(diff):
            noise = None
    psf = res.get("psf")
    if psf is not None and np.ndim(psf) == 2 and np.shape(psf) == np.shape(diff):
        psf = None
    kw = dict(scorr=res.get("scorr"), noise=noise, psf=psf, image=pair.image, template=pair.template,
              mask=pair.mask, template_mask=pair.template_mask, wcs=pair.wcs)
    kw.update(kwargs)
    return diff, kw


def _named(cset: CandidateSet, run, pair) -> CandidateSet:
    cset.meta["method"] = getattr(run, "method", "")
    cset.title = f"candidates on {getattr(pair, 'name', 'pair')}"
    return cset


def candidates_for_run(run, pair, **kwargs) -> CandidateSet:
    """:func:`find_candidates` on a finished :class:`~diffgui.app.run.Run` of ``pair``.

    Uses the run's S_corr (ZOGY) or its difference with the run's noise map,
    else the pair's noise maps in quadrature; keyword arguments are passed on.
    """
    diff, kw = _run_inputs(run, pair, kwargs)
    return _named(find_candidates(diff, **kw), run, pair)


_IMAGE_ARGS = ("scorr", "noise", "image", "template", "mask", "template_mask")


def _table_and_meta(diff, **kw) -> tuple:
    """Child-process body of :func:`candidates_for_run_isolated`: only the table travels back."""
    cset = find_candidates(diff, **kw)
    return cset.table, cset.meta


def candidates_for_run_isolated(run, pair, *, cancel=None, **kwargs) -> CandidateSet:
    """:func:`candidates_for_run` in a child process (:func:`diffgui.app.isolated.call_isolated`).

    The search runs ``sep``, which holds the GIL for up to a second on large images; in
    a child it cannot stall the caller's other threads (the GUI's event loop). The arrays
    go through shared memory, the table comes back, and the cutouts are taken from the
    caller's own arrays. ``cancel`` (callable): when it returns True the child is killed
    and :class:`~diffgui.engine.errors.Cancelled` raised.
    """
    from diffgui.engine.errors import as_image

    from .isolated import call_isolated

    diff, kw = _run_inputs(run, pair, kwargs)
    arrays = {"diff": diff}
    for key in _IMAGE_ARGS:
        val = kw.get(key)
        if isinstance(val, np.ndarray) and val.ndim == 2:
            arrays[key] = kw.pop(key)
    wcs = kw.pop("wcs", None)  # ra/dec are added here: a WCS need not be picklable
    table, meta = call_isolated(_table_and_meta, arrays, kw, cancel=cancel, name="diffgui-candidates")
    if wcs is not None and len(table):
        table["ra"], table["dec"] = _radec(wcs, np.asarray(table["x"], float), np.asarray(table["y"], float))
    images = {"science": arrays.get("image", kw.get("image")), "template": arrays.get("template", kw.get("template")),
              "diff": as_image(diff, "difference image"), "scorr": arrays.get("scorr", kw.get("scorr"))}
    images = {k: v for k, v in images.items() if v is not None}
    cset = CandidateSet(table, images, meta, wcs, int(kw.get("cutout_size", 31)))
    return _named(cset, run, pair)
