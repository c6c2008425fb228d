"""Exception types raised by the engine, and the input validation every method uses.

Every public engine function validates its inputs through :func:`as_image`,
:func:`as_mask`, :func:`as_noise` or :func:`validate_pair`, so that a user sees
one clear message naming the problem (and what to do about it) instead of a
traceback from deep inside numpy, sep or FFTW.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

__all__ = [
    "DiffguiError",
    "InputError",
    "FitError",
    "ExecutableError",
    "Cancelled",
    "as_image",
    "as_mask",
    "as_noise",
    "validate_pair",
    "ValidatedPair",
    "check_number",
    "make_logger",
    "check_cancel",
]


class DiffguiError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(DiffguiError, ValueError):
    """The caller gave data or parameters the engine cannot use.

    Subclasses :class:`ValueError`, so code written for stdpipe that catches
    ``ValueError`` keeps working.
    """


class FitError(DiffguiError, RuntimeError):
    """A fit could not be done: too few usable pixels or objects, a singular
    or ill-conditioned system, no convergence."""


class ExecutableError(DiffguiError, RuntimeError):
    """An external program (HOTPANTS) is missing, crashed, timed out, or
    reported success while producing nothing."""


class Cancelled(DiffguiError):
    """The run was cancelled by the caller (the GUI's Cancel button)."""


def _describe(name: str) -> str:
    return f"'{name}'"


def as_image(data, name: str = "image", *, dtype=np.float64, allow_nan: bool = True) -> np.ndarray:
    """Return ``data`` as a native-endian, C-contiguous 2-D float array.

    Safe conversions are done silently: big-endian FITS data is byte-swapped,
    integer and float32 data are converted to ``dtype``, non-contiguous views
    are copied. Anything else is refused with an :class:`InputError`.

    Parameters
    ----------
    data : array_like
        The image.
    name : str
        How the image is called in error messages (``'image'``, ``'template'``).
    dtype : numpy dtype, optional
        Floating type of the result (default float64).
    allow_nan : bool, optional
        If False, any non-finite pixel is an error. If True (default), only an
        image with no finite pixel at all is an error.

    Returns
    -------
    numpy.ndarray
        A new array or ``data`` itself when it already had the right form.
    """
    if data is None:
        raise InputError(f"{_describe(name)} is missing (None): pass a 2-D numpy array.")
    if hasattr(data, "mask") and isinstance(data, np.ma.MaskedArray):
        data = data.filled(np.nan)
    try:
        arr = np.asanyarray(data)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise InputError(f"{_describe(name)} cannot be read as an array: {exc}") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InputError(
            f"{_describe(name)} has data type {arr.dtype}, not numbers: pass a numeric 2-D array."
        )
    if arr.ndim != 2:
        hint = ""
        if arr.ndim == 3 and 1 in arr.shape:
            hint = " It looks like a cube with one plane: select the plane, e.g. data[0]."
        elif arr.ndim == 3:
            hint = " It is a cube: choose one plane."
        raise InputError(f"{_describe(name)} must be 2-D, got shape {arr.shape}.{hint}")
    if arr.size == 0 or min(arr.shape) == 0:
        raise InputError(f"{_describe(name)} is empty (shape {arr.shape}).")
    if arr.dtype.kind == "c":
        raise InputError(f"{_describe(name)} is complex: pass real pixel values.")
    # astype handles byte order, integer->float and contiguity in one copy.
    out = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("="))
    finite = np.isfinite(out)
    if not allow_nan and not finite.all():
        raise InputError(
            f"{_describe(name)} has {int((~finite).sum())} non-finite pixels (NaN/Inf): "
            "mask them or replace them first."
        )
    if not finite.any():
        raise InputError(f"{_describe(name)} has no finite pixels (all NaN or Inf).")
    return out


def as_mask(mask, shape, name: str = "mask") -> Optional[np.ndarray]:
    """Return ``mask`` as a boolean array of ``shape`` (True = bad), or None.

    Integer masks (FITS flag images) are converted with ``mask != 0``.
    """
    if mask is None:
        return None
    arr = np.asanyarray(mask)
    if arr.ndim != 2:
        raise InputError(f"{_describe(name)} must be 2-D, got shape {arr.shape}.")
    if arr.shape != tuple(shape):
        raise InputError(
            f"{_describe(name)} has shape {arr.shape} but the image has shape {tuple(shape)}."
        )
    if arr.dtype == bool:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{_describe(name)} must be boolean or integer, got {arr.dtype}.")
    return np.ascontiguousarray(arr != 0)


def as_noise(err, shape, name: str = "err") -> np.ndarray:
    """Return an explicit noise (sigma) map as a native float64 array.

    Non-finite or non-positive values are allowed (they mark unusable pixels
    and the callers mask them); a map with no positive finite value is refused.
    The caller's array is never modified: a copy is made when any conversion
    is needed, and callers that edit the result must copy it themselves.
    """
    arr = as_image(err, name)
    if arr.shape != tuple(shape):
        raise InputError(
            f"{_describe(name)} has shape {arr.shape} but the image has shape {tuple(shape)}."
        )
    good = np.isfinite(arr) & (arr > 0)
    if not good.any():
        raise InputError(f"{_describe(name)} has no positive finite value: it is not a noise map.")
    return arr


@dataclass
class ValidatedPair:
    """Inputs of a subtraction after validation.

    ``mask`` and ``template_mask`` already include the non-finite pixels of
    their image. ``err``/``template_err`` are arrays, ``True`` (build from the
    image) or None, as the caller passed them.
    """

    image: np.ndarray
    template: np.ndarray
    mask: np.ndarray
    template_mask: np.ndarray
    err: object = None
    template_err: object = None

    @property
    def shape(self):
        return self.image.shape


def validate_pair(image, template, mask=None, template_mask=None, err=None, template_err=None,
                  *, min_size: int = 8) -> ValidatedPair:
    """Validate a science/template pair with optional masks and noise maps.

    Raises :class:`InputError` for shape mismatches, non-2-D or empty images,
    images with no finite pixels, and pairs where no pixel is usable in both
    images. Noise maps may be arrays, ``True``/``False`` or None.

    Returns
    -------
    ValidatedPair
    """
    img = as_image(image, "image")
    tmpl = as_image(template, "template")
    if img.shape != tmpl.shape:
        raise InputError(
            f"image and template must have the same shape, got {img.shape} and {tmpl.shape}: "
            "align and crop them onto one pixel grid first."
        )
    if min(img.shape) < min_size:
        raise InputError(f"image is too small ({img.shape}); at least {min_size}x{min_size} is needed.")
    m = as_mask(mask, img.shape, "mask")
    tm = as_mask(template_mask, img.shape, "template_mask")
    m = ~np.isfinite(img) if m is None else (m | ~np.isfinite(img))
    tm = ~np.isfinite(tmpl) if tm is None else (tm | ~np.isfinite(tmpl))

    def _err(e, nm):
        if e is None or e is False:
            return None
        if e is True:
            return True
        return as_noise(e, img.shape, nm)

    e1 = _err(err, "err")
    e2 = _err(template_err, "template_err")
    if isinstance(e1, np.ndarray):
        m = m | ~(np.isfinite(e1) & (e1 > 0))
    if isinstance(e2, np.ndarray):
        tm = tm | ~(np.isfinite(e2) & (e2 > 0))
    if m.all():
        raise InputError("every pixel of the science image is masked or not finite.")
    if tm.all():
        raise InputError("every pixel of the template is masked or not finite.")
    if (m | tm).all():
        raise InputError("no pixel is usable in both images: the masks of image and template cover everything together.")
    return ValidatedPair(img, tmpl, m, tm, e1, e2)


def check_number(value, name: str, *, minimum: float = 0.0, inclusive: bool = False,
                 allow_none: bool = True) -> Optional[float]:
    """Return a scalar parameter as a finite float, or refuse it by name.

    Used by every ``run_*`` for gains, FWHMs and similar numbers, so that a
    gain of 0, -1 or NaN is an :class:`InputError` naming the parameter
    instead of silently wrong noise maps.

    Parameters
    ----------
    value : float or None
        The value passed by the caller.
    name : str
        Parameter name used in the message (``'image_gain'``).
    minimum : float, optional
        Lower bound (default 0).
    inclusive : bool, optional
        True: ``value >= minimum`` is allowed; False (default): ``value > minimum``.
    allow_none : bool, optional
        None means "unknown" and is returned as None (default True).

    Returns
    -------
    float or None
    """
    if value is None:
        if allow_none:
            return None
        raise InputError(f"{_describe(name)} is required (got None).")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                    np.floating)):
        raise InputError(f"{_describe(name)} must be a number, got {type(value).__name__} "
                         f"{value!r}.")
    f = float(value)
    if not np.isfinite(f):
        raise InputError(f"{_describe(name)} must be a finite number, got {f!r}"
                         + (" (use None when it is unknown)." if allow_none else "."))
    if f < minimum or (f == minimum and not inclusive):
        op = ">=" if inclusive else ">"
        raise InputError(f"{_describe(name)} must be {op} {minimum:g}, got {f:g}"
                         + (" (use None when it is unknown)." if allow_none else "."))
    return f


def make_logger(verbose) -> Callable[..., None]:
    """Turn stdpipe's ``verbose`` argument into a logging function.

    ``verbose`` may be False/None (silent), True (print to stdout) or a
    callable taking one string (the GUI's log). The returned function accepts
    ``print``-like positional arguments.

    It also has a ``progress(stage, fraction)`` method: the engine reports how far
    a stage is (``fraction`` in [0, 1]) through it. It calls ``verbose.progress``
    when the callable has one (the GUI's relay), and does nothing otherwise, so
    ``verbose=True``, ``print`` and plain callables keep working unchanged.
    """
    if callable(verbose):
        def log(*args):
            verbose(" ".join(str(a) for a in args))
    elif verbose:
        def log(*args):
            print(*args, flush=True)
    else:
        def log(*args):
            return None
    relay = getattr(verbose, "progress", None) if callable(verbose) else None

    def progress(stage, fraction):
        if callable(relay):
            relay(str(stage), min(1.0, max(0.0, float(fraction))))

    log.progress = progress
    return log


def check_cancel(cancel) -> None:
    """Raise :class:`Cancelled` when the ``cancel`` callable says so.

    Engine methods call this between stages with the keyword-only ``cancel``
    argument the GUI passes (for example ``threading.Event().is_set``).
    """
    if cancel is not None and cancel():
        raise Cancelled("the run was cancelled")
