"""Registration: bring a science image onto the template's pixel grid (no Qt).

Two ways to find the transform, both giving a :class:`Transform` that maps template
pixels ``(x, y)`` (0-based) to science pixels ``(x', y') = M @ (x, y) + t``:

* :func:`find_transform` matches stars of the two images. Star catalogues come from
  :func:`~diffgui.engine.common.detection.detect_objects`; triangles of neighbouring
  bright stars are compared by their scale- and rotation-free side ratios, each
  triangle match proposes a similarity transform, the one that explains most stars
  wins, and a least-squares fit on every matched star (several hundred in a crowded
  field) refines it.
* :func:`transform_from_wcs` uses the celestial WCS of both headers.

:func:`resample` then interpolates the science image at the template pixels with a
separable Lanczos-3 kernel (``sinc(x) sinc(x/3)``, ``|x| < 3``) whose 6 x 6 weights are
normalised to unit sum, so a flat image stays flat and total flux is kept; the values
are multiplied by ``|det M|`` (science pixels per template pixel) so flux per pixel is
conserved when the scales differ. The output is masked where any input pixel with a
non-zero weight is bad, or where the footprint leaves the image; the noise map is
propagated as ``var_out = det^2 * sum(w^2 var_in)`` (pixel variance only: resampled
noise is correlated between neighbours). The template is never resampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Optional

import numpy as np

from diffgui.engine.errors import FitError, InputError, as_image, as_mask

__all__ = ["Transform", "Registered", "find_transform", "transform_from_wcs", "resample", "register_image",
           "LANCZOS_A"]

#: Lanczos kernel half-width (pixels); the resampling footprint is 2 * LANCZOS_A pixels wide.
LANCZOS_A = 3
_BAD_FLAGS = 0x4 | 0x8 | 0x100


@dataclass
class Transform:
    """Affine map from template pixels to science pixels: ``xy_sci = matrix @ xy_tmpl + offset``.

    Attributes
    ----------
    matrix : ndarray, shape (2, 2)
    offset : ndarray, shape (2,)
        ``(dx, dy)`` in science pixels.
    method : str
        'stars', 'wcs' or 'given'.
    n_stars : int
        Stars used in the final fit (0 for WCS).
    rms : float
        RMS of the fit residuals in pixels (nan for WCS).
    """

    matrix: np.ndarray
    offset: np.ndarray
    method: str = "given"
    n_stars: int = 0
    rms: float = float("nan")
    extra: dict = field(default_factory=dict)

    def apply(self, x, y):
        """Science-image coordinates of template pixels ``(x, y)``."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        m, t = self.matrix, self.offset
        return m[0, 0] * x + m[0, 1] * y + t[0], m[1, 0] * x + m[1, 1] * y + t[1]

    def inverse(self, x, y):
        """Template coordinates of science pixels ``(x, y)``."""
        inv = np.linalg.inv(self.matrix)
        x, y = np.asarray(x, float) - self.offset[0], np.asarray(y, float) - self.offset[1]
        return inv[0, 0] * x + inv[0, 1] * y, inv[1, 0] * x + inv[1, 1] * y

    @property
    def scale(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    @property
    def rotation(self) -> float:
        """Rotation in degrees."""
        return float(np.degrees(np.arctan2(self.matrix[1, 0] - self.matrix[0, 1],
                                           self.matrix[0, 0] + self.matrix[1, 1])))

    def is_identity(self, tol: float = 1e-3) -> bool:
        return bool(np.allclose(self.matrix, np.eye(2), atol=tol / 1000) and np.all(np.abs(self.offset) < tol))

    def to_dict(self) -> dict:
        """JSON-compatible description (for provenance)."""
        return {"method": self.method, "matrix": self.matrix.tolist(), "offset": self.offset.tolist(),
                "scale": self.scale, "rotation_deg": self.rotation, "n_stars": int(self.n_stars),
                "rms_px": None if not np.isfinite(self.rms) else float(self.rms),
                "interpolant": f"lanczos{LANCZOS_A}", **self.extra}

    @classmethod
    def shift(cls, dx: float, dy: float) -> "Transform":
        return cls(np.eye(2), np.array([float(dx), float(dy)]), "given")


@dataclass
class Registered:
    """A science image resampled onto the template grid (see :func:`register_image`)."""

    image: np.ndarray
    mask: np.ndarray
    err: Optional[np.ndarray]
    header: object
    transform: Transform


# --------------------------------------------------------------------------- star matching

def _catalogue(image, mask, max_stars, thresh=8.0):
    from .detection import detect_objects

    cat = detect_objects(image, mask=mask, thresh=thresh, minarea=5)
    if len(cat) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    good = (np.asarray(cat["flags"]) & _BAD_FLAGS) == 0
    if good.sum() >= 10:
        cat = cat[good]
    cat = cat[np.isfinite(cat["x"]) & np.isfinite(cat["y"]) & (cat["flux"] > 0)]
    cat = cat[:max_stars]
    return np.column_stack([cat["x"], cat["y"]]).astype(float), np.asarray(cat["flux"], float)


_CACHE: dict = {}


def _cached_catalogue(image, mask, max_stars):
    """The template's catalogue, remembered per process (a batch registers many frames on one template)."""
    import hashlib

    h = hashlib.sha1(np.ascontiguousarray(image).view(np.uint8)).hexdigest()
    if mask is not None:
        h += hashlib.sha1(np.packbits(mask)).hexdigest()
    key = (image.shape, h, max_stars)
    if key not in _CACHE:
        if len(_CACHE) > 4:
            _CACHE.clear()
        _CACHE[key] = _catalogue(image, mask, max_stars)
    return _CACHE[key]


def _triangles(xy, k=5):
    """Triangles of each star with pairs of its k nearest neighbours: (invariants, vertex indices)."""
    from scipy.spatial import cKDTree

    n = len(xy)
    if n < 3:
        return np.zeros((0, 2)), np.zeros((0, 3), int)
    _, nn = cKDTree(xy).query(xy, min(k + 1, n))
    tris = {tuple(sorted((i, j, l))) for i in range(n) for j, l in combinations(nn[i, 1:], 2)}
    tris = np.array(sorted(tris), int)
    p = xy[tris]                                        # (T, 3, 2)
    # side opposite vertex v
    sides = np.stack([np.hypot(*(p[:, (v + 1) % 3] - p[:, (v + 2) % 3]).T) for v in range(3)], 1)
    order = np.argsort(-sides, axis=1)                  # vertices by opposite side, longest first
    s = np.take_along_axis(sides, order, 1)
    ok = s[:, 0] > 3.0
    inv = np.column_stack([s[:, 1] / np.maximum(s[:, 0], 1e-9), s[:, 2] / np.maximum(s[:, 0], 1e-9)])
    verts = np.take_along_axis(tris, order, 1)
    return inv[ok], verts[ok]


def _fit(src, dst, model):
    """Least-squares map src -> dst: 'shift', 'similarity' or 'affine'; returns (M, t)."""
    if model == "shift":
        return np.eye(2), (dst - src).mean(0)
    if model == "affine" and len(src) >= 3:
        a = np.column_stack([src, np.ones(len(src))])
        sol, *_ = np.linalg.lstsq(a, dst, rcond=None)
        return sol[:2].T, sol[2]
    # similarity: x' = a x - b y + tx ; y' = b x + a y + ty
    n = len(src)
    a = np.zeros((2 * n, 4))
    a[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    a[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    sol, *_ = np.linalg.lstsq(a, dst.reshape(-1), rcond=None)
    return np.array([[sol[0], -sol[1]], [sol[1], sol[0]]]), sol[2:]


def _matches(src, dst, m, t, tol):
    from scipy.spatial import cKDTree

    proj = src @ m.T + t
    d, j = cKDTree(dst).query(proj, distance_upper_bound=tol)
    ok = np.isfinite(d)
    # one science star per template star
    i_ok, j_ok = np.nonzero(ok)[0], j[ok]
    _, first = np.unique(j_ok, return_index=True)
    return i_ok[first], j_ok[first]


def _best_candidate(t_xy, s_xy, tol, max_tries=400):
    from scipy.spatial import cKDTree

    inv_t, ver_t = _triangles(t_xy)
    inv_s, ver_s = _triangles(s_xy)
    if len(inv_t) == 0 or len(inv_s) == 0:
        raise FitError("too few stars to match the images (need at least 3 in each)")
    d, j = cKDTree(inv_s).query(inv_t, distance_upper_bound=0.02)
    cand = np.nonzero(np.isfinite(d))[0]
    cand = cand[np.argsort(d[cand])][:max_tries]
    best = (0, None)
    for i in cand:
        src, dst = t_xy[ver_t[i]], s_xy[ver_s[j[i]]]
        m, t = _fit(src, dst, "similarity")
        sc = np.sqrt(abs(np.linalg.det(m)))
        if not 0.5 < sc < 2.0:
            continue
        n = len(_matches(t_xy, s_xy, m, t, tol)[0])
        if n > best[0]:
            best = (n, (m, t))
    need = max(5, int(0.25 * min(len(t_xy), len(s_xy))))
    if best[1] is None or best[0] < need:
        raise FitError(f"no consistent star matches between the images (best {best[0]} of {len(t_xy)} bright "
                       f"stars, need {need}): they may not overlap")
    return best[1]


def find_transform(image, template, *, mask=None, template_mask=None, model: str = "similarity",
                   max_stars: int = 300, n_bright: int = 40, initial: Optional[Transform] = None,
                   tol: float = 1.5) -> Transform:
    """Find the transform from template pixels to science pixels by matching stars.

    Parameters
    ----------
    image, template : array_like
        Science image and template (2-D).
    mask, template_mask : array_like of bool, optional
        Bad pixels (True), ignored by the detection.
    model : {'shift', 'similarity', 'affine'}
        Transform fitted to the matched stars (similarity: shift, rotation and scale).
    max_stars : int
        Stars (brightest unflagged) used in the final fit.
    n_bright : int
        Brightest stars used for triangle matching.
    initial : Transform, optional
        Starting guess (e.g. a measured offset); skips triangle matching.
    tol : float
        Match radius in pixels after the transform.

    Returns
    -------
    Transform
        ``method='stars'``, with the number of stars and the fit RMS.

    Raises
    ------
    InputError
        Unknown model.
    FitError
        Too few stars, or no consistent match.
    """
    if model not in ("shift", "similarity", "affine"):
        raise InputError(f"registration model must be 'shift', 'similarity' or 'affine', got {model!r}")
    img, tpl = as_image(image, "image"), as_image(template, "template")
    s_xy, _ = _catalogue(img, as_mask(mask, img.shape, "mask"), max_stars)
    t_xy, _ = _cached_catalogue(tpl, as_mask(template_mask, tpl.shape, "template_mask"), max_stars)
    if len(s_xy) < 3 or len(t_xy) < 3:
        raise FitError(f"too few stars to register ({len(s_xy)} in the image, {len(t_xy)} in the template)")
    if initial is not None:
        m, t = np.asarray(initial.matrix, float), np.asarray(initial.offset, float)
    else:
        m, t = _best_candidate(t_xy[:n_bright], s_xy[:n_bright], tol)
    for radius in (3 * tol, tol, tol, 0.5 * tol + 0.5):
        i, j = _matches(t_xy, s_xy, m, t, radius)
        need = {"shift": 1, "similarity": 2, "affine": 3}[model]
        if len(i) < max(need, 3):
            raise FitError(f"only {len(i)} stars matched between the images")
        m, t = _fit(t_xy[i], s_xy[j], model)
    res = s_xy[j] - (t_xy[i] @ m.T + t)
    # drop outliers (blends, variables) once and refit
    r = np.hypot(*res.T)
    keep = r < max(3 * 1.4826 * np.median(r), 0.05)
    if keep.sum() >= 3:
        m, t = _fit(t_xy[i][keep], s_xy[j][keep], model)
        res = s_xy[j][keep] - (t_xy[i][keep] @ m.T + t)
    rms = float(np.sqrt(np.mean(np.sum(res ** 2, 1))))
    return Transform(m, np.asarray(t, float), "stars", int(len(res)), rms, {"model": model})


def transform_from_wcs(image_header, template_header, shape) -> Optional[Transform]:
    """Affine transform from the celestial WCS of both headers, or None when either has none.

    The template grid ``shape`` is sampled on a 9 x 9 grid, projected to the sky and back
    into the science image, and an affine map is fitted (exact for tangent projections of
    the same pointing; distortion residuals are reported as ``rms``).
    """
    import warnings

    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ws, wt = WCS(image_header, naxis=2), WCS(template_header, naxis=2)
    except Exception:
        return None
    if not (ws.has_celestial and wt.has_celestial):
        return None
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
    sky = wt.pixel_to_world_values(gx.ravel(), gy.ravel())
    sx, sy = ws.world_to_pixel_values(*sky)
    src, dst = np.column_stack([gx.ravel(), gy.ravel()]), np.column_stack([sx, sy])
    if not np.all(np.isfinite(dst)):
        return None
    m, t = _fit(src, dst, "affine")
    rms = float(np.sqrt(np.mean(np.sum((dst - (src @ m.T + t)) ** 2, 1))))
    return Transform(m, np.asarray(t, float), "wcs", 0, rms)


# --------------------------------------------------------------------------- resampling

def _lanczos(x):
    x = np.asarray(x, float)
    out = np.sinc(x) * np.sinc(x / LANCZOS_A)
    out[np.abs(x) >= LANCZOS_A] = 0.0
    return out


def _lanczos_taps(f, taps):
    """``[_lanczos(f - k) for k in taps]`` with three sines instead of two per tap:
    sin(pi (f - k)) = (-1)^k sin(pi f), and sin(pi (f - k) / a) by the angle difference."""
    f = np.asarray(f, float)
    sp, sa, ca = np.sin(np.pi * f), np.sin(np.pi * f / LANCZOS_A), np.cos(np.pi * f / LANCZOS_A)
    out = []
    for k in taps:
        x = f - k
        b = np.pi * k / LANCZOS_A
        num = LANCZOS_A * (-1.0) ** k * sp * (sa * np.cos(b) - ca * np.sin(b))
        with np.errstate(divide="ignore", invalid="ignore"):
            w = num / (np.pi * np.pi * x * x)
        w = np.where(np.abs(x) < 1e-8, 1.0, w)
        w[np.abs(x) >= LANCZOS_A] = 0.0
        out.append(w)
    return out


def resample(image, transform: Transform, shape, *, mask=None, err=None, fill: float = np.nan):
    """Lanczos-3 resampling of ``image`` at the science coordinates of each template pixel.

    Parameters
    ----------
    image : array_like
        Science image.
    transform : Transform
        Template -> science pixel map.
    shape : tuple
        Template shape (output shape).
    mask : array_like of bool, optional
        Bad science pixels; output pixels whose footprint touches one (non-zero
        weight) are masked.
    err : array_like, optional
        Science noise (sigma) map, propagated through the squared weights.
    fill : float
        Value of output pixels whose footprint leaves the image.

    Returns
    -------
    out, out_mask, out_err : ndarray, bool ndarray, ndarray or None
    """
    img = as_image(image, "image")
    msk = as_mask(mask, img.shape, "mask")
    bad = ~np.isfinite(img) if msk is None else (msk | ~np.isfinite(img))
    src = np.where(bad, 0.0, img)
    var = None if err is None else np.where(bad, 0.0, np.asarray(err, float) ** 2)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    sx, sy = transform.apply(xx, yy)
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    taps = np.arange(-LANCZOS_A + 1, LANCZOS_A + 1)
    wx, wy = _lanczos_taps(fx, taps), _lanczos_taps(fy, taps)
    sx_sum, sy_sum = sum(wx), sum(wy)
    wx = [w / sx_sum for w in wx]
    wy = [w / sy_sum for w in wy]
    # pad by the footprint so every tap is a plain flat-index gather; the pad counts as bad
    pad = LANCZOS_A + 1
    hny, hnx = img.shape
    pw = hnx + 2 * pad
    flat = np.pad(src, pad).ravel()
    bad_flat = np.pad(bad, pad, constant_values=True).ravel()
    var_flat = None if var is None else np.pad(var, pad).ravel()
    outside = (x0 < -pad + LANCZOS_A) | (x0 >= hnx + pad - LANCZOS_A) | (y0 < -pad + LANCZOS_A) | \
        (y0 >= hny + pad - LANCZOS_A)
    base = (np.clip(y0, -pad + LANCZOS_A, hny + pad - LANCZOS_A - 1) + pad) * pw + \
        (np.clip(x0, -pad + LANCZOS_A, hnx + pad - LANCZOS_A - 1) + pad)
    out = np.zeros(shape)
    out_var = None if var is None else np.zeros(shape)
    out_bad = outside.copy()
    for a, kx in enumerate(taps):
        for b, ky in enumerate(taps):
            idx = base + (ky * pw + kx)
            w = wx[a] * wy[b]
            out += w * flat[idx]
            if out_var is not None:
                out_var += w * w * var_flat[idx]
            out_bad |= bad_flat[idx] & (np.abs(w) > 1e-9)
    det = abs(float(np.linalg.det(transform.matrix)))
    out *= det
    out[out_bad] = fill
    out_err = None
    if out_var is not None:
        out_err = np.sqrt(out_var) * det
        out_err[out_bad] = np.max(out_err[~out_bad], initial=1.0)
    return out, out_bad, out_err


def _header_with_transform(header, tr: Transform):
    from astropy.io import fits

    hdr = fits.Header() if header is None else header.copy()
    cards = {"REGMETH": (tr.method, "registration: how the transform was found"),
             "REGA11": (float(tr.matrix[0, 0]), "tmpl->sci pixel matrix"),
             "REGA12": (float(tr.matrix[0, 1]), ""), "REGA21": (float(tr.matrix[1, 0]), ""),
             "REGA22": (float(tr.matrix[1, 1]), ""),
             "REGDX": (float(tr.offset[0]), "tmpl->sci x offset (px)"),
             "REGDY": (float(tr.offset[1]), "tmpl->sci y offset (px)"),
             "REGNSTAR": (int(tr.n_stars), "stars in the fit"),
             "REGINTP": (f"lanczos{LANCZOS_A}", "resampling interpolant")}
    for key, val in cards.items():
        hdr[key] = val
    if np.isfinite(tr.rms):
        hdr["REGRMS"] = (float(tr.rms), "fit residual rms (px)")
    return hdr


#: Star fits with a larger residual RMS (px; poor seeing, trailing) get a cross-correlation touch-up.
#: On the 173 pyDIA frames every fit with rms < 0.15 px left <= 0.085 px (112 frames), while fits
#: of 0.19-0.2 px left 0.26-0.46 px (asymmetric PSFs bias the catalogue centroids).
REFINE_RMS = 0.15


def _refine(img, tpl, tr, resampled, template_mask, mask, err):
    """Correct the translation left after a loose star fit with FFT cross-correlation."""
    from .alignment import measure_offset

    out, out_mask, out_err = resampled
    left = measure_offset(np.where(out_mask, np.nan, out), tpl, out_mask, template_mask, rotation=False)
    if not left.reliable or np.hypot(left.dx, left.dy) < 0.05 or np.hypot(left.dx, left.dy) > 3:
        return tr, out, out_mask, out_err
    offset = tr.offset + tr.matrix @ np.array([left.dx, left.dy])
    new = Transform(tr.matrix, offset, tr.method, tr.n_stars, tr.rms,
                    {**tr.extra, "xcorr_refinement": [float(left.dx), float(left.dy)]})
    return (new, *resample(img, new, tpl.shape, mask=mask, err=err))


def register_image(image, template, *, mask=None, err=None, template_mask=None, header=None,
                   template_header=None, model: str = "similarity", use_wcs: bool = True,
                   transform: Optional[Transform] = None, initial: Optional[Transform] = None) -> Registered:
    """Resample the science image onto the template grid.

    Parameters
    ----------
    image, template : array_like
        Science image and template; the template is the reference grid, never resampled.
    mask, err : array_like, optional
        Science bad-pixel mask and noise map, propagated (see :func:`resample`).
    template_mask : array_like of bool, optional
        Template bad pixels (used only for the star catalogue).
    header, template_header : astropy.io.fits.Header, optional
        The science header is kept (with REG* cards recording the transform); when both
        carry a celestial WCS and ``use_wcs``, the WCS gives the transform.
    model : {'shift', 'similarity', 'affine'}
        Star-matching model.
    transform : Transform, optional
        Use this transform as given.
    initial : Transform, optional
        Starting guess for star matching.

    Returns
    -------
    Registered
    """
    img, tpl = as_image(image, "image"), as_image(template, "template")
    tr = transform
    if tr is None and use_wcs and header is not None and template_header is not None:
        tr = transform_from_wcs(header, template_header, tpl.shape)
    if tr is None:
        tr = find_transform(img, tpl, mask=mask, template_mask=template_mask, model=model, initial=initial)
    out, out_mask, out_err = resample(img, tr, tpl.shape, mask=mask, err=err)
    if transform is None and tr.method == "stars" and tr.rms > REFINE_RMS and img.shape == tpl.shape:
        tr, out, out_mask, out_err = _refine(img, tpl, tr, (out, out_mask, out_err), template_mask, mask, err)
    # masked pixels get a harmless value (the methods read the mask)
    if out_mask.any():
        out[out_mask] = np.median(out[~out_mask]) if (~out_mask).any() else 0.0
    hdr = _header_with_transform(header, tr)
    if template_header is not None:
        # the registered image lives on the template grid: take its WCS
        for key in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1",
                    "CD2_2", "CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CUNIT1", "CUNIT2"):
            if key in template_header:
                hdr[key] = template_header[key]
    return Registered(out, out_mask, out_err, hdr, tr)
