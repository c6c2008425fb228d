"""PSF models: the PSFEx-layout dict, stamps at any position, and estimation from stars.

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

:func:`estimate_psf` builds such a model from an image's own unsaturated,
isolated stars without any external program: an effective-PSF stack on a
(possibly oversampled) grid with sub-pixel star positions, refined
iteratively (positions and fluxes fitted with the current model, outlier
pixels and stars rejected), with an optional polynomial variation across the
field solved per model pixel.
"""

from __future__ import annotations

import os
import tempfile
import numpy as np
from scipy import ndimage

from diffgui.engine.errors import FitError, InputError, as_image, as_mask, check_cancel, make_logger

__all__ = [
    "PSF_KEYS",
    "ncoeffs_for_degree",
    "poly_terms",
    "make_psf",
    "psf_from_array",
    "as_psf",
    "load_psfex",
    "write_psfex",
    "evaluate_model",
    "get_psf_stamp",
    "stamp_size",
    "measure_fwhm",
    "estimate_psf",
    "ESTIMATE_OPTIONS",
]

#: Weight of the Wiener shrinkage applied to the spatial-variation terms inside
#: the core (1 = full shrinkage, 0 = none): a compromise between noise and bias.
VARIATION_SHRINK = 0.5
FIT_LOCAL_BACKGROUND = True
MODEL_FLOOR = 0.02
#: Radius (in FWHM) where the wing model starts replacing noisy pixels.
WING_START = 1.0
SYMMETRIC_CENTRES = True

PSF_KEYS = ("width", "height", "fwhm", "sampling", "degree", "ncoeffs", "x0", "sx", "y0", "sy", "data")

#: Keyword arguments of :func:`estimate_psf` that ``run_zogy(**kwargs)`` forwards.
ESTIMATE_OPTIONS = ("order", "psf_size", "oversampling", "thresh", "minarea", "aper", "gain",
                    "saturation", "sn", "max_stars", "min_stars", "isolation", "max_ellipticity",
                    "niter", "fwhm_range", "denoise")
#: stdpipe ``run_psfex`` options that only make sense for the external programs.
IGNORED_PSFEX_OPTIONS = ("sex_extra", "psfex_extra", "checkimages", "extra", "_workdir", "_tmpdir",
                         "_exe", "_sex_exe", "_psfex_exe", "mask_to_nans", "get_obj", "verbose")


# ---------------------------------------------------------------------------------------
# the model dict
# ---------------------------------------------------------------------------------------
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


def load_psfex(filename) -> dict:
    """Load a PSFEx ``.psf`` file into a PSF dict.

    POLZERO (1-based FITS pixels in PSFEx) is converted to 0-based ``x0``/``y0``.
    """
    from astropy.io import fits

    try:
        with fits.open(filename) as hdul:
            hdu = hdul["PSF_DATA"] if "PSF_DATA" in hdul else hdul[1]
            header = hdu.header.copy()
            data = np.array(hdu.data["PSF_MASK"][0], dtype=np.float64)
    except FileNotFoundError:
        raise InputError(f"PSF file {filename!s} does not exist.") from None
    except (OSError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{filename!s} is not a PSFEx .psf file: {exc}") from None
    if data.ndim == 2:
        data = data[None]
    degree = int(header.get("POLDEG1", 0)) if int(header.get("POLNAXIS", 0)) > 0 else 0
    return as_psf({
        "width": header.get("PSFAXIS1", data.shape[2]), "height": header.get("PSFAXIS2", data.shape[1]),
        "ncoeffs": header.get("PSFAXIS3", data.shape[0]),
        "fwhm": header.get("PSF_FWHM"), "sampling": header.get("PSF_SAMP", 1.0), "degree": degree,
        "x0": float(header.get("POLZERO1", 1.0)) - 1.0, "sx": header.get("POLSCAL1", 1.0),
        "y0": float(header.get("POLZERO2", 1.0)) - 1.0, "sy": header.get("POLSCAL2", 1.0),
        "data": data, "header": header,
    }, name=str(filename))


def write_psfex(psf, filename, overwrite: bool = False) -> None:
    """Write a PSF dict as a PSFEx-style ``.psf`` FITS file (atomically).

    ``x0``/``y0`` are written as 1-based POLZERO, as PSFEx does.
    """
    from astropy.io import fits

    p = as_psf(psf)
    if os.path.exists(filename) and not overwrite:
        raise InputError(f"{filename!s} exists: pass overwrite=True to replace it.")
    col = fits.Column(name="PSF_MASK", format=f"{p['data'].size}E",
                      dim=f"({p['width']}, {p['height']}, {p['ncoeffs']})",
                      array=p["data"][None].astype(np.float32))
    hdu = fits.BinTableHDU.from_columns([col], name="PSF_DATA")
    h = hdu.header
    h["LOADED"], h["ACCEPTED"] = int(p.get("nstars", 0)), int(p.get("nstars", 0))
    h["POLNAXIS"] = 2 if p["degree"] > 0 else 0
    if p["degree"] > 0:
        h["POLGRP1"], h["POLNAME1"], h["POLZERO1"], h["POLSCAL1"] = 1, "X_IMAGE", p["x0"] + 1.0, p["sx"]
        h["POLGRP2"], h["POLNAME2"], h["POLZERO2"], h["POLSCAL2"] = 1, "Y_IMAGE", p["y0"] + 1.0, p["sy"]
        h["POLNGRP"], h["POLDEG1"] = 1, p["degree"]
    h["PSF_FWHM"], h["PSF_SAMP"] = p["fwhm"], p["sampling"]
    h["PSFNAXIS"] = 3
    h["PSFAXIS1"], h["PSFAXIS2"], h["PSFAXIS3"] = p["width"], p["height"], p["ncoeffs"]
    folder = os.path.dirname(os.path.abspath(filename))
    fd, tmp = tempfile.mkstemp(suffix=".psf", dir=folder)
    os.close(fd)
    try:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
        os.replace(tmp, filename)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


# ---------------------------------------------------------------------------------------
# estimation
# ---------------------------------------------------------------------------------------
def _mask_radius(flux, fwhm, sigma, kappa=0.5, beta=2.5):
    """Radius beyond which a star of ``flux`` adds less than ``kappa * sigma`` per
    pixel, for a Moffat profile of the given FWHM (a conservative wing)."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    peak = flux * (beta - 1.0) / (np.pi * alpha * alpha)
    ratio = np.maximum(peak / (kappa * sigma), 1.0)
    return alpha * np.sqrt(ratio ** (1.0 / beta) - 1.0)


def _select_stars(obj, shape, half, fwhm, sn, max_ellipticity, isolation, fwhm_range, sigma, log):
    """Indices of usable stars and, for each, the neighbours to mask as
    ``(index, radius)`` pairs.

    A neighbour is masked out to the radius where its light falls below half
    the noise; a star is rejected when that disk (or any neighbour within
    ``isolation`` FWHM) reaches its core.
    """
    n = len(obj)
    x = np.asarray(obj["x"], float)
    y = np.asarray(obj["y"], float)
    flux = np.asarray(obj["flux"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / np.asarray(obj["fluxerr"], float)
        ell = 1.0 - np.asarray(obj["b"], float) / np.asarray(obj["a"], float)
    ofwhm = np.asarray(obj["fwhm"], float)
    flags = np.asarray(obj["flags"], int)
    h, w = shape
    m = half + 2
    ok = (flags == 0) & np.isfinite(snr) & (snr >= sn) & (flux > 0)
    ok &= (x >= m) & (y >= m) & (x <= w - 1 - m) & (y <= h - 1 - m)
    ok &= np.isfinite(ell) & (ell <= max_ellipticity)
    ok &= np.isfinite(ofwhm) & (ofwhm >= fwhm * fwhm_range[0]) & (ofwhm <= fwhm * fwhm_range[1])
    log(f"PSF: {ok.sum()} of {n} objects pass flags/S/N/shape/edge cuts")
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return idx, []
    from scipy.spatial import cKDTree

    rmask = _mask_radius(np.where(np.isfinite(flux) & (flux > 0), flux, 0.0), fwhm, sigma)
    rmask = np.maximum(rmask, 1.5 * fwhm)
    tree = cKDTree(np.c_[x, y])
    reach = np.hypot(half, half) + 1.0
    keep, neighbours = [], []
    core = 1.5 * fwhm
    for i in idx:
        near = tree.query_ball_point((x[i], y[i]), reach + rmask.max())
        bad = False
        masked = []
        for j in near:
            if j == i:
                continue
            d = np.hypot(x[j] - x[i], y[j] - y[i])
            if d >= reach + rmask[j]:
                continue
            if d < isolation * fwhm or d - rmask[j] < core:
                bad = True
                break
            masked.append((j, rmask[j]))
        if not bad:
            keep.append(i)
            neighbours.append(masked)
    log(f"PSF: {len(keep)} stars clear of their neighbours")
    return np.array(keep, dtype=int), neighbours


def estimate_psf(image, mask=None, err=None, *, fwhm=None, order=0, psf_size=None, oversampling=None,
                 thresh=5.0, minarea=5, aper=None, gain=None, saturation=None, sn=20.0, max_stars=300,
                 min_stars=None, isolation=2.0, max_ellipticity=0.3, fwhm_range=(0.6, 1.6), niter=None,
                 denoise=True, background=None, subtract_background=True, obj=None, get_obj=False,
                 cancel=None, verbose=False):
    """Estimate an effective PSF from an image's own stars (no external program).

    Parameters
    ----------
    image : array_like
        2-D image.
    mask : array_like of bool, optional
        True for bad pixels (never used in the stack; stars touching them are
        rejected by their detection flags).
    err : array_like, optional
        Per-pixel noise (sigma); default: background RMS, plus source Poisson
        noise when ``gain`` is given.
    fwhm : float, optional
        Initial FWHM guess in pixels; default: median FWHM of good detections.
    order : int
        Degree (0-2) of the polynomial variation across the field.
    psf_size : int, optional
        Stamp size in image pixels (odd); default ``2 ceil(3.5 FWHM) + 1``.
    oversampling : int, optional
        Model grid oversampling; default 1 for FWHM >= 3 px, 2 for FWHM >= 2,
        3 for FWHM >= 1.4, else 4.
    thresh, minarea, aper, gain, saturation : optional
        Detection options (see :func:`diffgui.engine.common.detection.detect_objects`).
    sn : float
        Minimum S/N of a PSF star (PSFEx's SAMPLE_MINSN, default 20).
    max_stars : int
        At most this many stars (the highest-S/N ones) are stacked.
    min_stars : int, optional
        Fewest stars accepted (default ``max(5, 3 ncoeffs)``).
    isolation : float
        A detected neighbour closer than this many FWHM rejects a star, and so
        does one whose light (above half the noise, for a conservative Moffat
        profile) reaches the star's core; other neighbours are masked out to
        that radius.
    max_ellipticity : float
        Largest ``1 - b/a`` of a PSF star.
    fwhm_range : (float, float)
        Accepted FWHM of a PSF star relative to the median.
    niter : int, optional
        Refinement iterations (positions, fluxes, clipping); default 3, or 6
        on an oversampled grid (its binning converges more slowly).
    denoise : bool
        Replace the model's wings (beyond ``WING_START`` FWHM) by a fitted
        radial profile plus only the significant residual structure, and set
        the model's zero level from that profile (default True); the core is
        never changed.
    background : Background, optional
        Background model to subtract; estimated when needed.
    subtract_background : bool
        False when the image is already background-subtracted.
    obj : astropy.table.Table, optional
        Detections to use instead of running detection.
    get_obj : bool
        Also return the detection table.
    cancel : callable, optional
        Returns True to abort (raises Cancelled).
    verbose : bool or callable
        Logging.

    Returns
    -------
    dict or (dict, Table)
        The PSF dict (PSFEx layout; extra keys ``nstars``, ``oversampling``,
        ``type``), and the detections with ``get_obj``.

    Raises
    ------
    FitError
        Too few usable stars.
    """
    from diffgui.engine.common.detection import detect_objects
    from diffgui.engine.common.noise import build_noise_map, estimate_background

    log = make_logger(verbose)
    img = as_image(image, "image")
    m = as_mask(mask, img.shape, "mask")
    bad = ~np.isfinite(img) if m is None else (m | ~np.isfinite(img))
    order = int(order)
    if order < 0 or order > 3:
        raise InputError(f"PSF polynomial order must be 0-3, got {order}.")
    if background is None and (subtract_background or err is None):
        background = estimate_background(img, bad)
    data = img - background.back if subtract_background else img.copy()
    data[bad] = 0.0
    if err is None:
        noise = build_noise_map(img, gain=gain, mask=bad, background=background)
    else:
        from diffgui.engine.errors import as_noise

        noise = as_noise(err, img.shape, "err")
    check_cancel(cancel)
    if obj is None:
        obj = detect_objects(img, mask=bad, err=None if err is None else noise, thresh=thresh,
                             minarea=minarea, aper=aper, gain=gain, saturation=saturation,
                             background=background, subtract_background=subtract_background)
    log(f"PSF: {len(obj)} objects detected")
    if len(obj) == 0:
        raise FitError("no objects detected for PSF estimation: lower 'thresh' or pass the PSF.")
    if saturation is None:
        # Clipped (saturated) images have many pixels at one maximum value.
        vmax = img[~bad].max()
        if np.count_nonzero(img[~bad] >= vmax - 1e-9 * abs(vmax)) >= 3:
            saturation = vmax
            log(f"PSF: the image looks clipped at {vmax:g}: stars reaching it are rejected")
    with np.errstate(invalid="ignore", divide="ignore"):
        s0 = np.asarray(obj["flux"], float) / np.asarray(obj["fluxerr"], float)
    okf = (np.asarray(obj["flags"]) == 0) & np.isfinite(np.asarray(obj["fwhm"], float)) & (s0 >= sn)
    if fwhm is None:
        if okf.sum() < 1:
            raise FitError("no unflagged object with enough S/N to measure the FWHM: pass fwhm= or the PSF.")
        fwhm0 = float(np.median(np.asarray(obj["fwhm"], float)[okf]))
    else:
        fwhm0 = float(fwhm)
    if not np.isfinite(fwhm0) or fwhm0 <= 0:
        raise FitError(f"could not determine a FWHM for PSF estimation (got {fwhm0}).")
    if psf_size is None:
        half = int(np.clip(np.ceil(3.5 * fwhm0), 4, 64))
    else:
        psf_size = int(psf_size)
        if psf_size < 3:
            raise InputError(f"psf_size must be at least 3, got {psf_size}.")
        half = psf_size // 2
    if 2 * half + 1 > min(img.shape):
        raise InputError(f"PSF size {2 * half + 1} is larger than the image {img.shape}.")
    if oversampling is None:
        osf = 1 if fwhm0 >= 3.0 else (2 if fwhm0 >= 2.0 else (3 if fwhm0 >= 1.4 else 4))
    else:
        osf = int(oversampling)
        if osf < 1 or osf > 8:
            raise InputError(f"oversampling must be 1-8, got {oversampling}.")
    if niter is None:
        niter = 3 if osf == 1 else 6
    nc = ncoeffs_for_degree(order)
    if min_stars is None:
        min_stars = max(5, 3 * nc)
    good_noise = noise[~bad & np.isfinite(noise) & (noise > 0)]
    sigma = float(np.median(good_noise)) if good_noise.size else 1.0
    idx, neighbours = _select_stars(obj, img.shape, half, fwhm0, sn, max_ellipticity, isolation,
                                    fwhm_range, sigma, log)
    if saturation is not None and idx.size:
        pk = np.array([img[int(round(obj["y"][i])) - 1:int(round(obj["y"][i])) + 2,
                           int(round(obj["x"][i])) - 1:int(round(obj["x"][i])) + 2].max() for i in idx])
        keep = pk < 0.98 * saturation if saturation > 0 else pk < saturation
        idx = idx[keep]
        neighbours = [nb for nb, k in zip(neighbours, keep) if k]
    if idx.size > max_stars:
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = np.asarray(obj["flux"], float)[idx] / np.asarray(obj["fluxerr"], float)[idx]
        best = np.argsort(-snr)[:max_stars]
        idx = idx[best]
        neighbours = [neighbours[i] for i in best]
    if idx.size < min_stars:
        raise FitError(
            f"only {idx.size} usable PSF stars (need {min_stars} for order {order}): lower 'sn' or "
            "'thresh', use a lower 'order', or pass the PSF explicitly."
        )
    check_cancel(cancel)
    h, w = img.shape
    model, info = _stack(data, noise, bad, obj, idx, neighbours, half, osf, order, fwhm0, niter,
                         (w - 1) / 2.0, float(w), (h - 1) / 2.0, float(h), cancel, log, denoise)
    psf = make_psf(model, sampling=1.0 / osf, degree=order, x0=(w - 1) / 2.0, sx=float(w),
                   y0=(h - 1) / 2.0, sy=float(h), nstars=info["nstars"], oversampling=osf, type="diffgui")
    psf["fwhm"] = measure_fwhm(get_psf_stamp(psf, (w - 1) / 2.0, (h - 1) / 2.0, 0.0, 0.0)) if osf == 1 \
        else measure_fwhm(evaluate_model(psf, (w - 1) / 2.0, (h - 1) / 2.0), 1.0 / osf)
    log(f"PSF: model from {info['nstars']} stars, FWHM {psf['fwhm']:.2f} px, "
        f"{model.shape[-1]}x{model.shape[-2]} grid, oversampling {osf}, degree {order}")
    if get_obj:
        return psf, obj
    return psf


def _stack(data, noise, bad, obj, idx, neighbours, half, osf, order, fwhm, niter, x0, sx, y0, sy,
           cancel, log, denoise=True):
    """Iterative effective-PSF stack with per-pixel polynomial variation.

    Every star pixel is a sample of the effective PSF at its offset from the
    star centre. Samples are binned on the model grid (``osf`` bins per image
    pixel) and the model is refined from the residuals of the current model
    interpolated at the exact offsets, which removes the binning blur. Star
    positions and fluxes are refitted with the model between iterations.
    """
    nst = idx.size
    hh = half + 1  # cut one more pixel: offsets reach +-(half + 0.5)
    size = 2 * hh + 1
    wf = 2 * osf * half + 1
    cf = osf * half
    xs = np.asarray(obj["x"], float)[idx].copy()
    ys = np.asarray(obj["y"], float)[idx].copy()
    fl = np.asarray(obj["flux"], float)[idx].copy()
    ix = np.round(xs).astype(int)
    iy = np.round(ys).astype(int)
    k = np.arange(-hh, hh + 1)
    rows = iy[:, None] + k[None, :]
    cols = ix[:, None] + k[None, :]
    d = data[rows[:, :, None], cols[:, None, :]]                     # (nst, size, size)
    var = noise[rows[:, :, None], cols[:, None, :]] ** 2
    wgt = np.where(bad[rows[:, :, None], cols[:, None, :]] | ~np.isfinite(var) | (var <= 0), 0.0, 1.0)
    # Neighbours: mask a disk around each, out to where its light is negligible.
    ox_all = np.asarray(obj["x"], float)
    oy_all = np.asarray(obj["y"], float)
    for s, nb in enumerate(neighbours):
        for j, rr in nb:
            dxn = (cols[s][None, :] - ox_all[j])
            dyn = (rows[s][:, None] - oy_all[j])
            wgt[s][dxn ** 2 + dyn ** 2 < rr * rr] = 0.0
    var = np.where(wgt > 0, var, 1.0)
    terms = poly_terms((xs - x0) / sx, (ys - y0) / sy, order).T       # (nst, nc)
    nc = terms.shape[1]
    coef = np.zeros((nc, wf, wf))
    star_ok = np.ones(nst, bool)
    bg = np.zeros(nst)
    gy, gx = np.meshgrid(k, k, indexing="ij")
    gx = np.broadcast_to(gx, d.shape)
    gy = np.broadcast_to(gy, d.shape)
    clip = np.ones(d.shape, bool)
    core = np.broadcast_to(gx ** 2 + gy ** 2 <= max(fwhm, 1.5) ** 2, d.shape)
    floor = MODEL_FLOOR
    for it in range(max(1, int(niter)) + 1):
        check_cancel(cancel)
        offx = gx + (ix - xs)[:, None, None]                           # pixel - centre
        offy = gy + (iy - ys)[:, None, None]
        fx = offx * osf + cf
        fy = offy * osf + cf
        bx = np.round(fx).astype(int)
        by = np.round(fy).astype(int)
        inside = (bx >= 0) & (bx < wf) & (by >= 0) & (by < wf)
        if osf == 1:
            inside = np.ones(d.shape, bool)    # shifted, then cropped below
        if it == 0:
            mval = np.zeros(d.shape)
        else:
            mval, _, _ = _model_values(coef, terms, fx, fy, need_grad=False)
        norm = (d - bg[:, None, None]) / fl[:, None, None]
        res = norm - mval
        # Weights of the normalised samples, with a fractional floor so the
        # brightest stars do not dominate through tiny model errors.
        w_s = wgt * clip * star_ok[:, None, None] * inside / (var / fl[:, None, None] ** 2
                                                              + (floor * np.abs(mval)) ** 2 + 1e-30)
        nb = wf * wf
        if osf == 1:
            # Shift each residual stamp onto the centred grid (cubic spline):
            # unlike nearest-pixel binning this does not blur, so few
            # iterations suffice on well-sampled images.
            sy_, sx_ = iy - ys, ix - xs
            rsh = _shift_stack(np.where(w_s > 0, res, 0.0), sy_, sx_, "cubic")
            cov_s = _shift_stack((w_s > 0).astype(float), sy_, sx_, "cubic")
            wsh = np.where(cov_s > 0.999, _shift_stack(w_s, sy_, sx_, "linear"), 0.0)
            inner = (slice(None), slice(1, -1), slice(1, -1))
            rsh, wsh = rsh[inner], wsh[inner]
            b = np.broadcast_to(np.arange(nb).reshape(wf, wf), rsh.shape).ravel()
            ws = wsh.ravel()
            rs = rsh.ravel()
            t = np.broadcast_to(terms[:, None, None, :], rsh.shape + (nc,)).reshape(-1, nc)
        else:
            b = (by * wf + bx)[inside]
            ws = w_s[inside]
            rs = res[inside]
            t = np.broadcast_to(terms[:, None, None, :], d.shape + (nc,))[inside]   # (ns, nc)
        A = np.zeros((nb, nc, nc))
        rhs = np.zeros((nb, nc))
        for a in range(nc):
            rhs[:, a] = np.bincount(b, ws * t[:, a] * rs, minlength=nb)
            for c in range(a, nc):
                A[:, a, c] = A[:, c, a] = np.bincount(b, ws * t[:, a] * t[:, c], minlength=nb)
        cover = A[:, 0, 0]
        good = cover > 0
        # Small ridge on the variation terms keeps thinly covered bins stable.
        ridge = 1e-6 * np.maximum(cover, 1e-30)
        A[:, range(nc), range(nc)] += ridge[:, None]
        delta = np.zeros((nb, nc))
        delta[good] = np.linalg.solve(A[good], rhs[good][..., None])[..., 0]
        delta = delta.T.reshape(nc, wf, wf)
        coef += delta
        if not good.all():
            # Fill bins no star sampled from their neighbours.
            for c in range(nc):
                img_c = coef[c]
                holes = ~good.reshape(wf, wf)
                filled = ndimage.generic_filter(np.where(holes, np.nan, img_c), np.nanmean, size=3,
                                                mode="nearest")
                img_c[holes] = np.nan_to_num(filled[holes])
        coef = _normalise_and_centre(coef, osf, fwhm)
        if it == max(1, int(niter)):
            if denoise:
                cov = np.zeros((nb, nc))
                cov[good] = np.diagonal(np.linalg.inv(A[good]), axis1=1, axis2=2)
                coef = _denoise(coef, np.sqrt(cov.T.reshape(nc, wf, wf)) * (osf * osf), osf, fwhm)
            break
        # Refit each star's flux and position with the current model.
        # Positions come from the model's point-symmetric part: fitting them
        # with the full model lets noise in the model and the positions
        # co-adapt (a drifting, skewed core); the symmetric part defines a
        # centre that noise cannot pull.
        fitcoef = 0.5 * (coef + coef[:, ::-1, ::-1]) if SYMMETRIC_CENTRES else coef
        mval, gxv, gyv = _model_values(fitcoef, terms, fx, fy, need_grad=True)
        wfit = wgt * clip / var
        F, ddx, ddy, B = _fit_stars(d, mval, gxv * osf, gyv * osf, wfit)
        okfit = np.isfinite(F) & (F > 0) & np.isfinite(ddx) & np.isfinite(ddy) & np.isfinite(B)
        fl = np.where(okfit, F, fl)
        bg = np.where(okfit, B, bg) if FIT_LOCAL_BACKGROUND else bg
        xs = np.where(okfit, xs + np.clip(ddx, -0.3, 0.3), xs)
        ys = np.where(okfit, ys + np.clip(ddy, -0.3, 0.3), ys)
        okfit &= (np.abs(xs - ix) <= 1.0) & (np.abs(ys - iy) <= 1.0)
        # Clip outlier pixels and reject stars that the model does not fit.
        model_pix = fl[:, None, None] * mval + bg[:, None, None]
        sig2 = var + (floor * np.abs(model_pix)) ** 2
        z = (d - model_pix) / np.sqrt(sig2)
        # Outlier pixels (cosmic rays, neighbours, defects) are far off even
        # allowing a 10 % model error; smaller deviations are model errors
        # that the next iteration corrects.
        zc = (d - model_pix) / np.sqrt(var + (0.1 * np.abs(model_pix)) ** 2)
        # Never clip the core: a model error there would otherwise remove the
        # core from every star and the stack could not recover.
        clip = (np.abs(zc) < 5.0) | (wgt == 0) | core
        npx = np.maximum((wgt * inside > 0).sum(axis=(1, 2)), 1)
        chi2 = ((z ** 2) * wgt * inside * clip).sum(axis=(1, 2)) / npx
        nclip = ((~clip) & (wgt > 0) & inside).sum(axis=(1, 2)) / npx
        ref = star_ok & okfit if (star_ok & okfit).any() else okfit
        med = np.median(chi2[ref]) if ref.any() else 1.0
        medc = np.median(nclip[ref]) if ref.any() else 0.0
        star_ok = okfit & (chi2 < max(3.0 * med, 2.0)) & (nclip <= max(0.05, 3.0 * medc))
        if star_ok.sum() < max(3, nc):
            raise FitError(f"PSF estimation: only {star_ok.sum()} stars are consistent with the model.")
    log(f"PSF: {star_ok.sum()} stars kept after {niter} iterations")
    return coef, {"nstars": int(star_ok.sum())}


def _denoise(coef, sigma, osf, fwhm):
    """Replace noise-dominated wing pixels by a smooth radial profile.

    The mean PSF's azimuthal profile is fitted with a Moffat profile plus a
    constant; the constant (the level a per-star local background leaves
    undetermined, and which zeroing the outer ring gets wrong for extended
    wings) is removed. Beyond ``WING_START`` FWHM every pixel becomes the fitted
    profile plus its Wiener-shrunk residual ``d s**2 / (s**2 + sigma**2)``
    (``s`` the locally smoothed residual, ``sigma`` the pixel's standard
    error from the stack): significant non-radial structure (spikes, rings)
    is kept, noise goes to the smooth profile. The core is never changed.
    The spatial-variation terms are shrunk towards zero the same way, and
    also partly in the core (weight ``VARIATION_SHRINK``).
    """
    nc, wf, _ = coef.shape
    cf = (wf - 1) / 2.0
    yy, xx = np.mgrid[0:wf, 0:wf]
    r = np.hypot(xx - cf, yy - cf) / osf
    ramp = np.clip((r - WING_START * fwhm) / (0.5 * fwhm), 0.0, 1.0)
    out = coef.copy()
    for c in range(nc):
        base = np.zeros((wf, wf))
        level = 0.0
        if c == 0:
            fit = _radial_fit(coef[0], sigma[0], r, fwhm)
            if fit is not None:
                base, level = fit
            base0 = base
        res = coef[c] - level - base
        sm = ndimage.gaussian_filter(res, 0.7 * osf, mode="constant")
        if c == 0:
            # Keep residual structure only where the smoothed residual is
            # significant (3 sigma of the smoothed noise): single noisy pixels
            # would otherwise leak through.
            s_sm = 0.7 * osf
            var_sm = ndimage.gaussian_filter(sigma[c] ** 2, s_sm / np.sqrt(2.0), mode="nearest") \
                / (4.0 * np.pi * s_sm * s_sm)
            gain = sm * sm / (sm * sm + 9.0 * var_sm + 1e-300)
            # Where the profile itself is below the pixel noise nothing can be
            # measured per pixel (and the faint, unmasked wings of neighbours,
            # allowed only away from the core, bias the stack upwards there):
            # taper to the pure profile.
            gain *= np.clip(base / (sigma[c] + 1e-300), 0.0, 1.0)
        else:
            gain = sm * sm / (sm * sm + sigma[c] ** 2 + 1e-300)
            # Variation terms: nothing measurable where the mean profile is
            # below their noise.
            gain *= np.clip(base0 / (sigma[c] + 1e-300), 0.0, 1.0)
        # The variation terms are noisier than the mean PSF: they are also
        # partly shrunk inside the core.
        rc = ramp if c == 0 else np.maximum(ramp, VARIATION_SHRINK)
        out[c] = coef[c] - level - rc * (1.0 - gain) * res
    return _normalise_and_centre(out, osf, fwhm, recentre=False, zero_ring=False)


def _radial_fit(img, sigma, r, fwhm):
    """Moffat-plus-constant fit to the azimuthal profile of a centred model.

    Returns ``(profile image without the constant, constant)`` or None when
    the fit fails. Annuli are weighted by their standard error with a 2 %
    floor, so the well-measured inner wings (not the core's exact shape)
    fix the tail and hence the constant.
    """
    from scipy.optimize import least_squares

    rmax = r[r.shape[0] // 2].max()
    step = 0.5
    k = np.floor(r / step).astype(int)
    nb = int(k.max()) + 1
    cnt = np.bincount(k.ravel(), minlength=nb)
    ok = cnt > 0
    mean = np.bincount(k.ravel(), img.ravel(), minlength=nb)[ok] / cnt[ok]
    err = np.sqrt(np.bincount(k.ravel(), (sigma ** 2).ravel(), minlength=nb)[ok]) / cnt[ok]
    rb = np.bincount(k.ravel(), r.ravel(), minlength=nb)[ok] / cnt[ok]
    use = (rb >= 0.5 * fwhm) & (rb <= rmax)
    if use.sum() < 6 or not np.isfinite(mean).all():
        return None
    rb, mean, err = rb[use], mean[use], err[use]
    peak = float(img.max())
    wt = 1.0 / np.sqrt(err ** 2 + (0.02 * np.abs(mean)) ** 2 + 1e-300)

    def model(p, rr):
        amp, alpha, beta, _ = p
        return amp * (1.0 + (rr / alpha) ** 2) ** (-beta)

    def resid(p):
        return (model(p, rb) + p[3] - mean) * wt

    alpha0 = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / 3.0) - 1.0))
    p0 = [peak, alpha0, 3.0, 0.0]
    try:
        sol = least_squares(resid, p0, bounds=([0, 0.05 * fwhm, 1.05, -np.inf], [np.inf, 20 * fwhm, 30.0, np.inf]),
                            x_scale=[peak, fwhm, 1.0, max(peak * 1e-3, 1e-12)])
    except (ValueError, np.linalg.LinAlgError):
        return None
    if not sol.success or not np.isfinite(sol.x).all():
        return None
    return model(sol.x, r), float(sol.x[3])


def _model_values(coef, terms, fx, fy, need_grad):
    """Model (and its fine-grid gradients) at fine coordinates (fx, fy) of every star."""
    nc = coef.shape[0]
    coords = np.array([fy.ravel(), fx.ravel()])
    val = np.zeros(fx.size)
    gxv = np.zeros(fx.size) if need_grad else None
    gyv = np.zeros(fx.size) if need_grad else None
    tt = np.broadcast_to(terms[:, None, None, :], fx.shape + (nc,)).reshape(-1, nc)
    for c in range(nc):
        v = ndimage.map_coordinates(coef[c], coords, order=3, mode="constant", cval=0.0)
        val += tt[:, c] * v
        if need_grad:
            gy_img, gx_img = _fourier_gradient(coef[c])
            gxv += tt[:, c] * ndimage.map_coordinates(gx_img, coords, order=3, mode="constant")
            gyv += tt[:, c] * ndimage.map_coordinates(gy_img, coords, order=3, mode="constant")
    shape = fx.shape
    if need_grad:
        return val.reshape(shape), gxv.reshape(shape), gyv.reshape(shape)
    return val.reshape(shape), None, None


def _fourier_gradient(img):
    """(d/dy, d/dx) of a small, well-sampled image by spectral differentiation."""
    h, w = img.shape
    F = np.fft.fft2(img)
    ky = 2j * np.pi * np.fft.fftfreq(h)[:, None]
    kx = 2j * np.pi * np.fft.fftfreq(w)[None, :]
    if h % 2 == 0:
        ky[h // 2] = 0
    if w % 2 == 0:
        kx[:, w // 2] = 0
    return np.fft.ifft2(F * ky).real, np.fft.ifft2(F * kx).real


def _shift_weights(t, kind):
    """Interpolation taps (offsets -1..2) and weights for fractions ``t`` in [0, 1)."""
    if kind == "linear":
        return np.array([0, 1]), np.stack([1.0 - t, t], axis=1)
    w = np.stack([((-0.5 * t + 1.0) * t - 0.5) * t,
                  (1.5 * t - 2.5) * t * t + 1.0,
                  ((-1.5 * t + 2.0) * t + 0.5) * t,
                  (0.5 * t - 0.5) * t * t], axis=1)          # Keys cubic, a = -0.5
    return np.array([-1, 0, 1, 2]), w


def _shift_stack(stack, sy, sx, kind="cubic"):
    """Shift every image of ``stack`` (n, h, w) by its own (sy, sx): out[y] = in[y - s].

    Separable Keys-cubic (or linear) interpolation with zeros outside,
    vectorised over the stack; shifts must be within +-2 pixels.
    """
    n, h, w = stack.shape
    pad = 4
    a = np.zeros((n, h + 2 * pad, w + 2 * pad))
    a[:, pad:pad + h, pad:pad + w] = stack
    star = np.arange(n)[:, None, None]
    q0 = np.floor(-np.asarray(sx, float))
    taps, wts = _shift_weights(-np.asarray(sx, float) - q0, kind)
    base = np.arange(w)[None, :] + pad + q0.astype(int)[:, None]
    tmp = np.zeros((n, h + 2 * pad, w))
    rows = np.arange(h + 2 * pad)[None, :, None]
    for k, tap in enumerate(taps):
        idx = np.clip(base + tap, 0, w + 2 * pad - 1)
        tmp += wts[:, k, None, None] * a[star, rows, idx[:, None, :]]
    q0 = np.floor(-np.asarray(sy, float))
    taps, wts = _shift_weights(-np.asarray(sy, float) - q0, kind)
    base = np.arange(h)[None, :] + pad + q0.astype(int)[:, None]
    out = np.zeros((n, h, w))
    cols = np.arange(w)[None, None, :]
    for k, tap in enumerate(taps):
        idx = np.clip(base + tap, 0, h + 2 * pad - 1)
        out += wts[:, k, None, None] * tmp[star, idx[:, :, None], cols]
    return out


def _fit_stars(d, m, gx, gy, w):
    """Per star, weighted least squares of ``d = F m - a gx - c gy + b`` (a = F dx).

    ``gx``/``gy`` are model gradients per image pixel; returns F, dx, dy and
    the local background b.
    """
    basis = (m, -gx, -gy, np.ones_like(m))
    A = np.empty((d.shape[0], 4, 4))
    r = np.empty((d.shape[0], 4))
    for i in range(4):
        r[:, i] = (w * basis[i] * d).sum(axis=(1, 2))
        for j in range(i, 4):
            A[:, i, j] = A[:, j, i] = (w * basis[i] * basis[j]).sum(axis=(1, 2))
    sol = np.full((d.shape[0], 4), np.nan)
    ok = np.linalg.cond(A) < 1e12
    if ok.any():
        sol[ok] = np.linalg.solve(A[ok], r[ok][..., None])[..., 0]
    F = sol[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return F, sol[:, 1] / F, sol[:, 2] / F, sol[:, 3]


def _normalise_and_centre(coef, osf, fwhm, recentre=True, zero_ring=True):
    """Zero outer ring, unit flux at every position, and the constant term's
    centroid on the grid centre.

    The outer ring (the last image pixel of the grid) fixes the level that a
    per-star local background would otherwise leave undetermined.
    """
    wf = coef.shape[1]
    cf = (wf - 1) / 2.0
    yy, xx = np.mgrid[0:wf, 0:wf]
    if zero_ring:
        ring = np.maximum(np.abs(xx - cf), np.abs(yy - cf)) > cf - osf
        coef = coef - coef[:, ring].mean(axis=1)[:, None, None]
    total = coef[0].sum()
    if not np.isfinite(total) or total <= 0:
        raise FitError("PSF estimation diverged (the model has no positive flux).")
    # Image-pixel stamps sum to coef.sum() / osf**2: make that 1, and the
    # variation terms flux-free.
    out = coef * (osf * osf / total)
    for c in range(1, coef.shape[0]):
        out[c] -= out[0] * (out[c].sum() / out[0].sum())
    if not recentre:
        return out
    sig = max(fwhm, 1.0) / 2.3548 * osf
    win = np.exp(-((xx - cf) ** 2 + (yy - cf) ** 2) / (2 * sig * sig))
    wm = win * out[0]
    s = wm.sum()
    if s > 0:
        cx = (wm * xx).sum() / s - cf
        cy = (wm * yy).sum() / s - cf
        if abs(cx) > 1e-4 or abs(cy) > 1e-4:
            out = np.array([ndimage.shift(c, (-cy, -cx), order=3, mode="constant") for c in out])
    return out
