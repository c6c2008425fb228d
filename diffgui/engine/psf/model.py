"""The PSF model: the PSFEx-layout dict, its validation, evaluation and image-pixel stamps.

The model is the dict stdpipe uses for PSFEx results, so PSFs from stdpipe or
PSFEx ``.psf`` files work here and ours work there:

``width``, ``height``
    Size of the model grid (model pixels).
``sampling``
    Image pixels per model pixel (0.5 means 2x oversampled).
``degree``, ``ncoeffs``
    Polynomial degree of the spatial variation and number of terms,
    ``(degree + 1) (degree + 2) / 2``.
``x0``, ``sx``, ``y0``, ``sy``
    The polynomial variables are ``u = (x - x0) / sx`` and ``v = (y - y0) / sy``
    with 0-based pixel coordinates (a PSFEx file's 1-based POLZERO is
    converted on loading).
``data``
    Array ``(ncoeffs, height, width)``; term ``k`` runs over ``u**i v**j`` with
    ``i + j <= degree``, the power of ``v`` in the outer loop: ``1, u, u**2, v,
    u v, v**2`` for degree 2 (PSFEx's order).
``fwhm``
    FWHM in image pixels at the field centre.

The grid centre is at ``((width - 1) / 2, (height - 1) / 2)``. Model values
are *effective* (pixel-integrated) PSF samples, like PSFEx's: an image-pixel
stamp is obtained by interpolating the model at the pixel offsets (scaled by
``1 / sampling``). Models with an integer oversampling ``N`` and sizes
divisible by ``N`` (stdpipe's simulated PSFs) are instead summed in ``N x N``
blocks, as stdpipe does.

:func:`diffgui.engine.psf.estimation.estimate_psf` builds such models from stars.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from diffgui.engine.errors import InputError, as_image

PSF_KEYS = ("width", "height", "fwhm", "sampling", "degree", "ncoeffs", "x0", "sx", "y0", "sy", "data")


def ncoeffs_for_degree(degree: int) -> int:
    """Number of polynomial terms of total degree <= ``degree`` in two variables."""
    d = int(degree)
    return (d + 1) * (d + 2) // 2


def poly_terms(u, v, degree: int) -> np.ndarray:
    """PSFEx-ordered polynomial terms ``u**i v**j`` (``i + j <= degree``, v outer).

    Returns an array of shape ``(ncoeffs,) + broadcast(u, v).shape``.
    """
    u, v = np.broadcast_arrays(np.asarray(u, dtype=float), np.asarray(v, dtype=float))
    terms = []
    vp = np.ones_like(u)
    for j in range(degree + 1):
        up = np.ones_like(u)
        for _ in range(degree + 1 - j):
            terms.append(up * vp)
            up = up * u
        vp = vp * v
    return np.array(terms)


def make_psf(data, sampling=1.0, degree=0, x0=0.0, sx=1.0, y0=0.0, sy=1.0, fwhm=None, **extra) -> dict:
    """Build a PSF dict from a model array ``(ncoeffs, h, w)`` or ``(h, w)``.

    ``fwhm`` is measured from the model when not given. Extra keywords are
    kept in the dict (e.g. ``nstars``).
    """
    arr = np.array(data, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    psf = {
        "width": int(arr.shape[2]), "height": int(arr.shape[1]), "fwhm": None,
        "sampling": float(sampling), "degree": int(degree), "ncoeffs": int(arr.shape[0]),
        "x0": float(x0), "sx": float(sx), "y0": float(y0), "sy": float(sy), "data": arr,
    }
    psf.update(extra)
    psf = as_psf(psf)
    if fwhm is not None:
        psf["fwhm"] = float(fwhm)
    return psf


def psf_from_array(stamp, fwhm=None) -> dict:
    """A constant PSF (degree 0, sampling 1) from a centred 2-D stamp.

    Even-sized stamps are accepted: their centre is between pixels and
    :func:`get_psf_stamp` resamples them onto an odd grid.
    """
    arr = as_image(stamp, "psf", allow_nan=False)
    return make_psf(arr, fwhm=fwhm)


def as_psf(psf, name: str = "psf") -> dict:
    """Validate a PSF given as a dict, a 2-D array or a PSFEx ``.psf`` file name.

    Returns a new dict (float64 ``data``, all keys present, ``fwhm`` filled
    in); the caller's object is never modified.

    Raises
    ------
    InputError
        Missing keys, data inconsistent with ``width``/``height``/``ncoeffs``/
        ``degree``, non-positive sampling or scales, non-finite values, or a
        model with no flux.
    """
    if isinstance(psf, (str, os.PathLike)):
        from diffgui.engine.psf.psfex_files import load_psfex

        return load_psfex(psf)
    if not isinstance(psf, dict):
        if isinstance(psf, np.ndarray) or isinstance(psf, (list, tuple)):
            try:
                return psf_from_array(psf)
            except InputError as exc:
                raise InputError(f"{name}: {exc}") from None
        raise InputError(
            f"{name} must be a PSF dict (PSFEx layout), a 2-D array or a PSFEx .psf file name, "
            f"got {type(psf).__name__}."
        )
    missing = [k for k in ("data",) if k not in psf]
    if missing:
        raise InputError(f"{name} lacks the key(s) {missing}: a PSFEx-layout dict needs {list(PSF_KEYS)}.")
    data = np.array(psf["data"], dtype=np.float64)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or min(data.shape) < 1:
        raise InputError(f"{name}['data'] must have shape (ncoeffs, height, width), got {data.shape}.")
    if not np.isfinite(data).all():
        raise InputError(f"{name}['data'] has non-finite values.")
    nc, h, w = data.shape
    degree = int(psf.get("degree", 0) or 0)
    if degree < 0:
        raise InputError(f"{name}['degree'] must be >= 0, got {degree}.")
    checks = (("width", w), ("height", h), ("ncoeffs", nc))
    for key, actual in checks:
        if key in psf and psf[key] is not None and int(psf[key]) != actual:
            raise InputError(
                f"{name} is inconsistent: {key}={psf[key]} but data has shape {data.shape} "
                "(ncoeffs, height, width)."
            )
    if ncoeffs_for_degree(degree) != nc:
        raise InputError(
            f"{name} is inconsistent: degree {degree} needs {ncoeffs_for_degree(degree)} coefficient "
            f"images but data has {nc}."
        )
    sampling = psf.get("sampling", 1.0)
    sampling = 1.0 if sampling is None else float(sampling)
    if not np.isfinite(sampling) or sampling <= 0:
        raise InputError(f"{name}['sampling'] must be positive, got {psf.get('sampling')!r}.")
    out = dict(psf)
    out.update(width=w, height=h, ncoeffs=nc, degree=degree, sampling=sampling, data=data)
    for key, default in (("x0", 0.0), ("y0", 0.0), ("sx", 1.0), ("sy", 1.0)):
        val = psf.get(key, default)
        val = default if val is None else float(val)
        if not np.isfinite(val) or (key in ("sx", "sy") and val == 0):
            extra = " and non-zero" if key in ("sx", "sy") else ""
            raise InputError(f"{name}['{key}'] must be finite{extra}.")
        out[key] = val
    if data[0].sum() <= 0:
        raise InputError(f"{name} has no positive flux in its constant term.")
    fwhm = psf.get("fwhm")
    if fwhm is None or not np.isfinite(fwhm) or fwhm <= 0:
        fwhm = measure_fwhm(data[0], sampling)
    out["fwhm"] = float(fwhm)
    return out


# ---------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------
def evaluate_model(psf, x=0.0, y=0.0) -> np.ndarray:
    """The model grid ``(height, width)`` at image position ``(x, y)`` (not normalised)."""
    p = psf if _is_valid(psf) else as_psf(psf)
    if p["degree"] == 0:
        return p["data"][0].copy()
    t = poly_terms((float(x) - p["x0"]) / p["sx"], (float(y) - p["y0"]) / p["sy"], p["degree"])
    return np.tensordot(t, p["data"], axes=(0, 0))


def _is_valid(psf) -> bool:
    return isinstance(psf, dict) and isinstance(psf.get("data"), np.ndarray) and psf["data"].ndim == 3 \
        and psf.get("fwhm") is not None and "ncoeffs" in psf and psf["data"].dtype == np.float64


def _integer_oversampling(p) -> int:
    s = p["sampling"]
    n = int(round(1.0 / s))
    w, h = p["width"], p["height"]
    if n > 1 and abs(n * s - 1.0) < 1e-3 and w % n == 0 and h % n == 0 and (w // n) % 2 == 1 \
            and (h // n) % 2 == 1:
        return n
    return 0


def stamp_size(psf) -> tuple:
    """``(height, width)`` of the image-pixel stamps :func:`get_psf_stamp` returns (odd)."""
    p = psf if _is_valid(psf) else as_psf(psf)
    n = _integer_oversampling(p)
    if n:
        return (p["height"] // n, p["width"] // n)
    s = p["sampling"]
    return (2 * int(np.floor(p["height"] * s / 2)) + 1, 2 * int(np.floor(p["width"] * s / 2)) + 1)


def get_psf_stamp(psf, x=0.0, y=0.0, dx=None, dy=None, normalize=True) -> np.ndarray:
    """Image-pixel PSF stamp at ``(x, y)``, odd-sized and centred.

    Parameters
    ----------
    psf : dict, ndarray or str
        The PSF (see :func:`as_psf`).
    x, y : float
        0-based image position where the spatial polynomial is evaluated.
    dx, dy : float, optional
        Sub-pixel offset of the PSF centre from the stamp's central pixel.
        Default: ``x - round(x)`` and ``y - round(y)`` (the stamp is centred on
        pixel ``(round(x), round(y))``). Pass 0 for a PSF centred on the
        central pixel.
    normalize : bool
        Scale the stamp to unit sum (default).

    Returns
    -------
    ndarray
        The stamp, shape :func:`stamp_size`.
    """
    p = psf if _is_valid(psf) else as_psf(psf)
    dx = float(x) - np.round(float(x)) if dx is None else float(dx)
    dy = float(y) - np.round(float(y)) if dy is None else float(dy)
    model = evaluate_model(p, x, y)
    s = p["sampling"]
    n = _integer_oversampling(p)
    if n:
        # stdpipe's convention for integer oversampling: the fine grid holds the
        # intrinsic PSF; shift it, then integrate over N x N blocks.
        if dx or dy:
            model = ndimage.shift(model, (dy * n, dx * n), order=3, mode="constant", cval=0.0)
        h, w = model.shape
        out = model.reshape(h // n, n, w // n, n).sum(axis=(1, 3))
    else:
        hs, ws = stamp_size(p)
        cy, cx = (p["height"] - 1) / 2.0, (p["width"] - 1) / 2.0
        if s == 1.0 and dx == 0 and dy == 0 and (hs, ws) == model.shape:
            out = model
        else:
            oy = (np.arange(hs) - hs // 2 - dy) / s + cy
            ox = (np.arange(ws) - ws // 2 - dx) / s + cx
            coords = np.array(np.meshgrid(oy, ox, indexing="ij"))
            out = ndimage.map_coordinates(model, coords, order=3, mode="constant", cval=0.0)
            if s != 1.0:
                out *= 1.0 / (s * s)
    out = np.array(out, dtype=np.float64)
    if normalize:
        tot = out.sum()
        if not np.isfinite(tot) or tot <= 0:
            raise InputError("the PSF stamp has no positive flux at this position.")
        out /= tot
    return out


def measure_fwhm(stamp, sampling: float = 1.0, zoom: int = 8) -> float:
    """FWHM (image pixels) of a centred PSF image from the area above half maximum.

    The stamp is interpolated ``zoom`` times finer (cubic spline) around its
    peak and ``FWHM = 2 sqrt(area / pi)``, exact for round profiles.
    """
    a = np.asarray(stamp, dtype=np.float64)
    if a.ndim != 2 or not np.isfinite(a).all() or a.max() <= 0:
        return float("nan")
    iy, ix = np.unravel_index(np.argmax(a), a.shape)
    peak = a[iy, ix]
    above = a >= 0.5 * peak
    ys, xs = np.nonzero(above)
    r = int(max(np.abs(ys - iy).max(), np.abs(xs - ix).max())) + 2
    y0, y1 = max(0, iy - r), min(a.shape[0], iy + r + 1)
    x0, x1 = max(0, ix - r), min(a.shape[1], ix + r + 1)
    sub = a[y0:y1, x0:x1]
    gy = np.arange(0, sub.shape[0] - 1 + 1e-9, 1.0 / zoom)
    gx = np.arange(0, sub.shape[1] - 1 + 1e-9, 1.0 / zoom)
    fine = ndimage.map_coordinates(sub, np.array(np.meshgrid(gy, gx, indexing="ij")), order=3, mode="nearest")
    area = np.count_nonzero(fine >= 0.5 * fine.max()) / zoom ** 2
    return float(2.0 * np.sqrt(area / np.pi) * sampling)

