"""Background, noise map and objects of one image in one call, on both cores.

Detection thresholds on the background RMS (as SExtractor does), so the noise
map, which only the photometry and the subtraction need, is built in a second
thread while sep detects: scipy's filter releases the GIL, sep does not.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from diffgui.engine.common.detection import detect_objects
from diffgui.engine.errors import as_image, as_mask
from diffgui.engine.common.noise import Background, build_noise_map, estimate_background

__all__ = ["ImageAnalysis", "analyse_image"]


@dataclass
class ImageAnalysis:
    """What :func:`analyse_image` found.

    Attributes
    ----------
    background : Background
        Background and background RMS maps.
    noise : ndarray
        Per-pixel noise (sigma): background RMS with the sources' Poisson term.
    objects : astropy.table.Table
        Detected objects (see :func:`diffgui.engine.common.detection.detect_objects`).
    """

    background: Background
    noise: np.ndarray
    objects: Table


def analyse_image(image, gain=None, mask=None, thresh: float = 4.0, saturation=None,
                  **detect_kwargs) -> ImageAnalysis:
    """Estimate the background, build the noise map and detect objects.

    Parameters
    ----------
    image : array_like
        2-D image in ADU (background not subtracted).
    gain : float, optional
        Gain (e-/ADU) for the sources' Poisson noise.
    mask : array_like of bool, optional
        True for bad pixels.
    thresh : float
        Detection threshold in units of the background RMS.
    saturation : float, optional
        Saturation level for the saturated-object flag.
    **detect_kwargs
        Passed on to :func:`~diffgui.engine.common.detection.detect_objects`.

    Returns
    -------
    ImageAnalysis
    """
    img = as_image(image, "image")
    m = as_mask(mask, img.shape, "mask")
    background = estimate_background(img, m)
    with ThreadPoolExecutor(1) as pool:
        noise_job = pool.submit(build_noise_map, img, gain, m, background)
        objects = detect_objects(img, mask=m, thresh=thresh, gain=gain, saturation=saturation,
                                 background=background, **detect_kwargs)
        noise = noise_job.result()
    return ImageAnalysis(background, noise, objects)
