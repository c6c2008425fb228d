"""Load a science/template pair and register the science image onto the template grid (no Qt).

Used by ``diffgui run --align``, ``diffgui batch --align`` and the window's offer to align a
misaligned pair. The template is never resampled (it is the reference grid); see
:mod:`diffgui.engine.common.registration` for the transform and the interpolant.
"""

from __future__ import annotations

import os
from typing import Optional

from diffgui.engine.errors import InputError

__all__ = ["align_pair", "load_aligned_pair", "check_model"]


def align_pair(pair, *, model: str = "similarity", transform=None):
    """Return ``(new_pair, transform)`` with the science image resampled onto the template grid.

    Parameters
    ----------
    pair : diffgui.app.pair.Pair
    model : {'shift', 'similarity', 'affine'}
        Star-matching model (ignored when both headers carry a celestial WCS).
    transform : Transform, optional
        Use this transform as given.

    Returns
    -------
    (Pair, Transform)
    """
    from diffgui.engine.common.registration import register_image

    from .pair import Pair

    reg = register_image(pair.image, pair.template, mask=pair.mask, err=pair.err,
                         template_mask=pair.template_mask, header=pair.image_header,
                         template_header=pair.template_header, model=model, transform=transform)
    new = Pair(reg.image, pair.template, mask=reg.mask, template_mask=pair.template_mask, err=reg.err,
               template_err=pair.template_err, image_header=reg.header, template_header=pair.template_header,
               image_path=pair.image_path, template_path=pair.template_path, name=pair.name,
               truth=dict(pair.truth), input_files=dict(pair.input_files))
    new.wcs = getattr(pair, "wcs", None)
    return new, reg.transform


def load_aligned_pair(science, template, *, model: str = "similarity", mask_saturated: bool = True):
    """Load two FITS images (shapes may differ) and register the science image onto the template.

    Returns
    -------
    (Pair, Transform)

    Raises
    ------
    InputError
        Unreadable files; FitError when the images cannot be matched.
    """
    from .pair import Pair, _with_saturation, read_fits_image

    sci = read_fits_image(science, name="science image")
    tmp = _read_template(template)
    m, tm = sci.mask, tmp.mask
    if mask_saturated:
        m = _with_saturation(m, sci.data, sci.header)
        tm = _with_saturation(tm, tmp.data, tmp.header)
    from diffgui.engine.common.registration import register_image

    reg = register_image(sci.data, tmp.data, mask=m, err=sci.err, template_mask=tm, header=sci.header,
                         template_header=tmp.header, model=model)
    label = f"{os.path.basename(sci.path)} - {os.path.basename(tmp.path)}"
    pair = Pair(reg.image, tmp.data, mask=reg.mask, template_mask=tm, err=reg.err, template_err=tmp.err,
                image_header=reg.header, template_header=tmp.header, image_path=sci.path,
                template_path=tmp.path, name=label)
    return pair, reg.transform


_TEMPLATE: dict = {}  # the last template read by this process, with its file's size and time


def _read_template(path):
    """The template, read once per process while its file is unchanged (a batch registers every
    frame onto one template); each call gets its own copies of the arrays and header."""
    import dataclasses

    from .pair import read_fits_image, split_hdu_spec

    try:
        st = os.stat(split_hdu_spec(os.fspath(path))[0])
        key = (os.fspath(path), st.st_mtime_ns, st.st_size)
    except OSError:  # read_fits_image says what is wrong
        return read_fits_image(path, name="template")
    if _TEMPLATE.get("key") != key:
        _TEMPLATE.clear()
        _TEMPLATE.update(key=key, image=read_fits_image(path, name="template"))
    img = _TEMPLATE["image"]
    copy = (lambda a: None if a is None else a.copy())
    return dataclasses.replace(img, data=img.data.copy(), header=img.header.copy(), mask=copy(img.mask),
                               err=copy(img.err))


def check_model(model: Optional[str]) -> str:
    """Validate an ``--align`` model name."""
    model = (model or "similarity").lower()
    if model not in ("shift", "similarity", "affine"):
        raise InputError(f"--align takes shift, similarity or affine, got {model!r}")
    return model
