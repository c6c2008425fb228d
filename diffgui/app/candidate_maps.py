"""Maps and stamps behind candidate finding: PSF stamps and FWHM, the matched-filter
significance map, cutouts (no Qt)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from diffgui.engine.errors import InputError

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

