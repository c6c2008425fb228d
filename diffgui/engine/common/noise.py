"""Background, background RMS and per-pixel noise (sigma) maps.

The noise model is the one the stdpipe documentation describes for
``err=True``: the background RMS map is the main term, and the sources add
Poisson noise computed from the background-subtracted image, smoothed
slightly (so that pixel noise is not mistaken for signal), keeping its
positive part, divided by the gain; both terms add in quadrature::

    sigma^2 = rms_bg^2 + max(smooth(I - B), 0) / gain

Without a gain (None or <= 0) only the background term is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep
from scipy import ndimage

from diffgui.engine.errors import InputError, as_image, as_mask, as_noise

__all__ = ["Background", "estimate_background", "build_noise_map", "resolve_noise"]

#: Gaussian sigma (px) of the smoothing applied to the source term.
SOURCE_SMOOTH_SIGMA = 1.0



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


def build_noise_map(image, gain=None, mask=None, background: Background | None = None,
                    smooth: float = SOURCE_SMOOTH_SIGMA) -> np.ndarray:
    """Per-pixel noise (sigma, ADU) of an image from its background and gain.

    Parameters
    ----------
    image : array_like
        2-D image in ADU, background not subtracted or subtracted: only
        ``image - background`` enters the source term.
    gain : float, optional
        Gain in e-/ADU. None or <= 0 drops the source term.
    mask : array_like of bool, optional
        Pixels ignored by the background estimate.
    background : Background, optional
        A background already estimated for this image.
    smooth : float
        Gaussian sigma (px) applied to the source term; 0 disables it.

    Returns
    -------
    ndarray
        The sigma map; non-finite input pixels get the largest finite sigma.
    """
    img, m = _sep_ready(image, mask)
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
    sigma = np.sqrt(var, out=var)
    bad = ~(sigma > 0)  # NaN and non-positive in one pass; inf cannot occur here
    if m is not None:
        bad |= ~np.isfinite(as_image(image))
    if bad.any():
        good = sigma[~bad]
        sigma[bad] = good.max() if good.size else 1.0
    return sigma


def resolve_noise(err, image, gain=None, mask=None, name: str = "err",
                  background: Background | None = None):
    """Turn a method's ``err`` argument into a noise map or None.

    Parameters
    ----------
    err : None, bool or array_like
        None/False: no map (returns None); True: build one with
        :func:`build_noise_map`; an array: validated and returned as a new
        float64 array (the caller's array is never modified).
    image : array_like
        The image the noise belongs to.
    gain : float, optional
        Gain for the source term when building.
    mask : array_like of bool, optional
        Mask for the background estimate.
    name : str
        Name used in error messages.
    background : Background, optional
        Reused when building.

    Returns
    -------
    ndarray or None
    """
    if err is None or err is False:
        return None
    if err is True:
        return build_noise_map(image, gain=gain, mask=mask, background=background)
    shape = np.shape(image)
    arr = as_noise(err, shape, name)
    if arr is err:
        arr = arr.copy()
    return arr
