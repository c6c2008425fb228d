"""Background, background RMS and per-pixel noise (sigma) maps.

Two noise models (``model=``):

``'poisson'`` (default)
    When the gain is known the variance of a pixel is the Poisson variance of
    its counts plus the read noise::

        sigma^2 = max(I, 0) / gain + (read_noise / gain)^2      [ADU^2]

    with ``I`` the pixel value itself (background model + source, not
    smoothed, clipped at zero) and ``read_noise`` in electrons (as the
    ``RDNOISE`` headers give it). In a crowded field this is the pixel noise,
    whereas the sep background RMS also holds the confusion of unresolved
    stars (3.7 times too high on the pyDIA bulge frames). An image whose sky
    was subtracted has no counts left to model the sky noise from: its sky
    variance is then taken from the measured pixel-to-pixel noise. Without a
    gain (None or <= 0) the sep background RMS is the noise.

``'stdpipe'``
    stdpipe's ``err=True`` model: the background RMS in quadrature with the
    source term computed from the background-subtracted image smoothed by a
    Gaussian of ``smooth`` px, positive part, divided by the gain::

        sigma^2 = rms_bg^2 + max(smooth(I - B), 0) / gain

:func:`check_noise` compares a map with the measured pixel-to-pixel noise
(robust std of differences of neighbouring faint pixels / sqrt(2)) and says
why they differ; :func:`resolve_noise` logs its warnings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy import ndimage

from diffgui.engine.errors import InputError, as_image, as_mask, as_noise

__all__ = ["Background", "NoiseCheck", "NOISE_MODELS", "estimate_background", "build_noise_map",
           "resolve_noise", "measure_pixel_noise", "check_noise"]

#: Gaussian sigma (px) of the smoothing applied to the source term (model 'stdpipe').
SOURCE_SMOOTH_SIGMA = 1.0
#: Names of the noise models of :func:`build_noise_map`.
NOISE_MODELS = ("poisson", "stdpipe")
#: Relative difference between a noise map and the measured pixel noise that is warned about.
CHECK_TOLERANCE = 0.2
#: Fraction of the faintest neighbour pairs used to measure the pixel noise.
FAINT_FRACTION = 0.3
_MAX_CHECK_PIXELS = 1 << 18  # rows are subsampled above this: 40k faint pairs are ample


@dataclass
class Background:
    """A background model.

    Attributes
    ----------
    back : ndarray
        Background level per pixel (ADU).
    rms : ndarray
        Background RMS per pixel (ADU).
    globalback, globalrms : float
        Global (median-of-mesh) background level and RMS.
    """

    back: np.ndarray
    rms: np.ndarray
    globalback: float
    globalrms: float


@dataclass
class NoiseCheck:
    """A noise map compared with the measured pixel-to-pixel noise.

    Attributes
    ----------
    measured : float
        Pixel-to-pixel noise of the faintest pixels (ADU).
    model : float
        The map's noise on the same pixels (ADU).
    level : float
        Median value of those pixels (the sky level, ADU).
    ratio : float
        ``model / measured``.
    ok : bool
        True when they agree within :data:`CHECK_TOLERANCE`.
    reason : str
        Plain reason for a disagreement ('' when ok).
    """

    measured: float
    model: float
    level: float
    ratio: float
    ok: bool
    reason: str = ""

    def message(self, name: str = "image") -> str:
        """One log line: the figures and, when they disagree, a WARNING with the reason."""
        text = (f"{name} noise map {self.model:.4g} ADU vs measured pixel noise {self.measured:.4g} ADU "
                f"on the faintest pixels (ratio {self.ratio:.2f})")
        return text if self.ok else f"WARNING: {text}: {self.reason}"


def _sep_ready(image, mask):
    """float64 native image with non-finite pixels zeroed and added to the mask."""
    img = as_image(image)
    bad = ~np.isfinite(img)
    m = as_mask(mask, img.shape)
    if bad.any():
        img = np.where(bad, 0.0, img)
        m = bad if m is None else (m | bad)
    if m is not None and m.all():
        raise InputError("every pixel is masked: no background can be estimated.")
    return img, m


def _sep_background(img, m, bw, bh, filter_size):
    try:
        bkg = sep.Background(np.ascontiguousarray(img),
                             mask=None if m is None else np.ascontiguousarray(m),
                             bw=bw, bh=bh, fw=filter_size, fh=filter_size)
    except Exception as exc:  # sep raises plain Exceptions with terse texts
        raise InputError(f"background estimation failed: {exc}") from None
    return bkg.back(), bkg.rms(), float(bkg.globalback), float(bkg.globalrms)


def estimate_background(image, mask=None, box: int = 64, filter_size: int = 3) -> Background:
    """Estimate the background and its RMS with sep (SExtractor's algorithm).

    Parameters
    ----------
    image : array_like
        2-D image; non-finite pixels are ignored.
    mask : array_like of bool, optional
        True for pixels to ignore.
    box : int
        Mesh size in pixels (default 64, sep's and stdpipe's choice).
    filter_size : int
        Median filter size over the mesh (default 3).

    Returns
    -------
    Background
    """
    img, m = _sep_ready(image, mask)
    ny, nx = img.shape
    bw = int(min(box, nx))
    bh = int(min(box, ny))
    back, rms, gback, grms = _sep_background(img, m, bw, bh, filter_size)
    if not np.isfinite(grms) or grms <= 0:
        good = rms[np.isfinite(rms) & (rms > 0)]
        grms = float(np.median(good)) if good.size else 0.0
    return Background(back=back, rms=rms, globalback=gback, globalrms=grms)


def _faint_pairs(img, m, sigma=None, cache=None):
    """Horizontal neighbour pairs whose sum is among the faintest :data:`FAINT_FRACTION`.

    For white noise of equal variance, ``a - b`` is independent of ``a + b``, so
    selecting by the sum does not bias the spread of the difference.
    Returns ``(diff, level, model_var)`` (``model_var`` None without ``sigma``).
    ``cache``: a dict shared by calls on the same image and mask (building a
    map and checking it), so that the pairs are selected once.
    """
    if cache is not None and "pairs" in cache:
        got = cache["pairs"]
        if got is None:
            return None
        step, w, ok, sel, d, level = got
    else:
        got = _select_pairs(img, m)
        if cache is not None:
            cache["pairs"] = got
        if got is None:
            return None
        step, w, ok, sel, d, level = got
    model_var = None
    if sigma is not None:
        sa, sb = sigma[::step, :-1:2][:, :w][ok][sel], sigma[::step, 1::2][:, :w][ok][sel]
        model_var = 0.5 * float(np.median(sa * sa + sb * sb))
    return d, level, model_var


def _select_pairs(img, m):
    """``(step, w, ok, sel, diff, level)`` of :func:`_faint_pairs`, or None (< 50 pairs)."""
    ny, nx = img.shape
    step = max(1, int(np.ceil(ny * nx / _MAX_CHECK_PIXELS)))
    a, b = img[::step, :-1:2], img[::step, 1::2]
    w = min(a.shape[1], b.shape[1])
    a, b = a[:, :w], b[:, :w]
    ok = np.isfinite(a) & np.isfinite(b)
    if m is not None:
        ok &= ~(m[::step, :-1:2][:, :w] | m[::step, 1::2][:, :w])
    a, b = a[ok], b[ok]
    if a.size < 50:
        return None
    s = a + b
    k = max(1, int(FAINT_FRACTION * s.size))
    cut = np.partition(s, k - 1)[k - 1]
    sel = s <= cut
    d = a[sel] - b[sel]
    level = 0.5 * float(np.median(s[sel]))
    return step, w, ok, sel, d, level


def _robust_std(x) -> float:
    med = np.median(x)
    return 1.4826 * float(np.median(np.abs(x - med)))


def measure_pixel_noise(image, mask=None) -> tuple[float, float]:
    """White (pixel-to-pixel) noise of the faintest pixels of an image.

    The robust std of differences of neighbouring pixels divided by sqrt(2),
    over the :data:`FAINT_FRACTION` faintest pairs: smooth structure (sky
    gradients, the confusion of unresolved stars) cancels in the differences.

    Parameters
    ----------
    image : array_like
        2-D image (ADU).
    mask : array_like of bool, optional
        Pixels to ignore.

    Returns
    -------
    (float, float)
        The noise (ADU) and the median level of those pixels; ``(nan, nan)``
        when fewer than 50 usable pairs exist.
    """
    img = as_image(image)
    m = as_mask(mask, img.shape)
    got = _faint_pairs(img, m)
    if got is None:
        return float("nan"), float("nan")
    d, level, _ = got
    return _robust_std(d) / np.sqrt(2.0), level


def check_noise(image, sigma, mask=None, *, gain=None, tolerance: float = CHECK_TOLERANCE,
                _cache=None) -> NoiseCheck:
    """Compare a noise map with the measured pixel-to-pixel noise of the image.

    Parameters
    ----------
    image : array_like
        The image the map belongs to (ADU).
    sigma : array_like
        Its noise (sigma) map.
    mask : array_like of bool, optional
        Pixels to ignore.
    gain : float, optional
        The gain the map was built with (None: the map is a background RMS).
    tolerance : float
        Relative difference accepted (default 20 %).

    Returns
    -------
    NoiseCheck
        ``ok`` False with a plain ``reason`` when they differ by more than
        ``tolerance`` (in either direction).
    """
    img = as_image(image)
    m = as_mask(mask, img.shape)
    sig = np.asarray(sigma, dtype=float)
    got = _faint_pairs(img, m, sig, _cache)
    if got is None:
        return NoiseCheck(float("nan"), float("nan"), float("nan"), float("nan"), True, "")
    d, level, model_var = got
    measured = _robust_std(d) / np.sqrt(2.0)
    model = float(np.sqrt(model_var))
    ratio = model / measured if measured > 0 else float("inf")
    ok = abs(ratio - 1.0) <= tolerance
    reason = ""
    if not ok:
        known = gain is not None and np.isfinite(gain) and gain > 0
        if ratio > 1 and not known:
            reason = ("crowded: confusion noise (unresolved stars) raises the background RMS above the "
                      "pixel noise; give the gain (GAIN header or image_gain) for a Poisson noise model")
        elif ratio > 1:
            reason = ("gain or read noise probably wrong (the model is too high), or the image "
                      "keeps a bias level that is not sky")
        else:
            reason = ("gain or read noise probably wrong (the model is too low), or the noise is "
                      "correlated (a resampled image)" if ratio > 0.5 or not known else
                      "gain or read noise probably wrong (the model is far too low)")
    return NoiseCheck(measured, model, level, ratio, ok, reason)


def _stdpipe_variance(img, m, gain, background, smooth):
    if background is None:
        background = estimate_background(img, m)
    var = np.square(background.rms)
    if gain is not None and np.isfinite(gain) and gain > 0:
        # float32 is ample for a noise term and halves the filter's cost.
        src = np.subtract(img, background.back, dtype=np.float32)
        if smooth and smooth > 0:
            src = ndimage.gaussian_filter(src, smooth, mode="nearest", truncate=2.0)
        np.maximum(src, 0.0, out=src)
        src *= np.float32(1.0 / float(gain))
        var += src
    return var


def _poisson_variance(img, m, gain, read_noise, log, cache=None):
    """max(I, 0)/g + (rn/g)^2, plus the sky's variance when the sky was subtracted."""
    var = np.maximum(img, 0.0)
    var *= 1.0 / gain
    var += (read_noise / gain) ** 2
    got = _faint_pairs(img, m, None, cache)
    if got is not None:
        d, level, _ = got
        measured = _robust_std(d) / np.sqrt(2.0)
        model = np.sqrt(max(level, 0.0) / gain + (read_noise / gain) ** 2)
        # A sky level within 3 sigma of zero: the sky was subtracted, its Poisson
        # noise is in the pixels but no longer in the counts.
        if level < 3.0 * measured and measured > (1 + CHECK_TOLERANCE) * model:
            extra = measured ** 2 - model ** 2
            var += extra
            log(f"the image looks background-subtracted (sky level {level:.3g} ADU, pixel noise "
                f"{measured:.3g} ADU): a sky variance of {extra:.4g} ADU^2 from the pixel noise is added")
    return var


def build_noise_map(image, gain=None, mask=None, background: Background | None = None,
                    smooth: float = SOURCE_SMOOTH_SIGMA, *, read_noise=None, model: str = "poisson",
                    log=None, _cache=None) -> np.ndarray:
    """Per-pixel noise (sigma, ADU) of an image.

    Parameters
    ----------
    image : array_like
        2-D image in ADU with its sky (model 'poisson' with a gain: the counts
        are the pixel values).
    gain : float, optional
        Gain in e-/ADU. None or <= 0: the sep background RMS is the noise.
    mask : array_like of bool, optional
        Pixels ignored by the background estimate and the pixel-noise measurement.
    background : Background, optional
        A background already estimated for this image (used without a gain
        and by model 'stdpipe').
    smooth : float
        Model 'stdpipe' only: Gaussian sigma (px) applied to the source term.
    read_noise : float, optional
        Read noise in electrons (model 'poisson'; default 0).
    model : {'poisson', 'stdpipe'}
        See the module documentation.
    log : callable, optional
        Receives a line when the sky variance has to be taken from the pixels.

    Returns
    -------
    ndarray
        The sigma map; non-finite or masked-invalid pixels get the largest finite sigma.
    """
    if model not in NOISE_MODELS:
        raise InputError(f"noise model must be one of {', '.join(NOISE_MODELS)}, got {model!r}")
    img, m = _sep_ready(image, mask)
    known = gain is not None and np.isfinite(gain) and gain > 0
    rn = 0.0 if read_noise is None else float(read_noise)
    if not np.isfinite(rn) or rn < 0:
        raise InputError(f"read noise must be a number >= 0 (electrons), got {read_noise!r}")
    if model == "poisson" and known:
        var = _poisson_variance(img, m, float(gain), rn, log or (lambda *a: None), _cache)
    else:
        var = _stdpipe_variance(img, m, gain if model == "stdpipe" else None, background, smooth)
    sigma = np.sqrt(var, out=var)
    bad = ~(sigma > 0)  # NaN and non-positive in one pass; inf cannot occur here
    if m is not None:
        bad |= ~np.isfinite(as_image(image))
    if bad.any():
        good = sigma[~bad]
        sigma[bad] = good.max() if good.size else 1.0
    return sigma


def resolve_noise(err, image, gain=None, mask=None, name: str = "err",
                  background: Background | None = None, *, read_noise=None, model: str = "poisson",
                  log=None):
    """Turn a method's ``err`` argument into a noise map or None.

    Parameters
    ----------
    err : None, bool or array_like
        None/False: no map (returns None); True: build one with
        :func:`build_noise_map` and check it against the pixel noise
        (:func:`check_noise`, result logged); an array: validated and returned
        as a new float64 array (the caller's array is never modified).
    image : array_like
        The image the noise belongs to.
    gain : float, optional
        Gain (e-/ADU) when building.
    mask : array_like of bool, optional
        Mask for the background estimate.
    name : str
        Name used in error messages.
    background : Background, optional
        Reused when building.
    read_noise : float, optional
        Read noise (electrons) when building.
    model : {'poisson', 'stdpipe'}
        Noise model when building (see :func:`build_noise_map`).
    log : callable, optional
        Receives the check's line (a ``WARNING: ...`` when the map and the
        measured noise differ by more than 20 %).

    Returns
    -------
    ndarray or None
    """
    if err is None or err is False:
        return None
    if err is True:
        # One pair selection for the map's sky check and the noise check.
        cache = {}
        sigma = build_noise_map(image, gain=gain, mask=mask, background=background,
                                read_noise=read_noise, model=model, log=log, _cache=cache)
        if log is not None:
            log(check_noise(image, sigma, mask, gain=gain, _cache=cache).message(name))
        return sigma
    shape = np.shape(image)
    arr = as_noise(err, shape, name)
    if arr is err:
        arr = arr.copy()
    return arr
