"""Checks and input clean-up every ``run_*`` does before the method starts.

:func:`check_run_inputs` refuses numbers that must be finite and positive
(gains, FWHMs; None means unknown) and runs whose estimated peak memory is
above the limit (:mod:`diffgui.engine.common.resources`);
:func:`mask_hot_pixels` adds isolated hot pixels of both images to their
masks (:mod:`diffgui.engine.common.defects`).
"""

from __future__ import annotations

import numpy as np

from diffgui.engine.common.defects import find_hot_pixels
from diffgui.engine.common.resources import check_memory
from diffgui.engine.errors import check_number

__all__ = ["check_run_inputs", "mask_hot_pixels"]


def check_run_inputs(method, image, memory_limit, log, positive=(), non_negative=(), **params):
    """Validate scalar parameters and the memory estimate of one run.

    Parameters
    ----------
    method : str
        'hotpants', 'zogy' or 'sfft'.
    image : array_like
        The science image (only its shape is used).
    memory_limit : float, str or None
        See :func:`diffgui.engine.common.resources.resolve_memory_limit`.
    log : callable
        Receives the memory estimate.
    positive, non_negative : sequence of (name, value)
        Numbers that must be > 0, or >= 0 (None allowed: unknown).
    **params
        Parameters that set the memory (kernel_shape, nx, ...).

    Raises
    ------
    InputError
        Naming the bad parameter, or giving the estimate and the limit.
    """
    for name, value in positive:
        check_number(value, name)
    for name, value in non_negative:
        check_number(value, name, inclusive=True)
    shape = np.shape(image)
    if len(shape) == 2:
        check_memory(method, shape, memory_limit, log, **params)


def mask_hot_pixels(pair, image_fwhm, template_fwhm, log):
    """Add the isolated hot pixels of both images to the masks of a
    :class:`~diffgui.engine.errors.ValidatedPair`, in place; returns the pair."""
    for img, attr, fwhm, what in ((pair.image, "mask", image_fwhm, "science image"),
                                  (pair.template, "template_mask", template_fwhm, "template")):
        hot = find_hot_pixels(img, getattr(pair, attr), fwhm)
        n = int(np.count_nonzero(hot))
        if n:
            setattr(pair, attr, getattr(pair, attr) | hot)
            log(f"{n} isolated hot pixel{'s' if n > 1 else ''} masked in the {what}")
    return pair
