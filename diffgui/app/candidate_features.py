"""Finding and measuring candidates: peaks, sub-pixel positions, local fluxes, shape
features, template distances, and the steps of
:func:`diffgui.app.candidates.find_candidates` (no Qt)."""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from diffgui.app.candidate_maps import _FWHM_SIGMA, _robust_sigma, _stamp_fwhm, estimate_fwhm
from diffgui.engine.errors import InputError

FLAG_EDGE = 0x8
FLAG_MASKED = 0x100


# ---- finding ------------------------------------------------------------------------------

def _source_mask(preps, fwhm: float) -> Optional[np.ndarray]:
    """Pixels near sources of any of the prepared images (box-smoothed excess over 3 sigma,
    grown by 1 FWHM); None when no image is given."""
    from scipy import ndimage

    out = None
    box = max(3, int(round(fwhm)))
    for prep in preps:
        if prep is None or not prep.usable:
            continue
        excess = ndimage.uniform_filter(prep.sub / np.where(prep.rms > 0, prep.rms, np.inf), size=box)
        src = excess > 3.0 / box  # 3 sigma of the box mean
        out = src if out is None else (out | src)
    if out is None:
        return None
    return ndimage.binary_dilation(out, iterations=max(2, int(round(fwhm))))


_STATS_SIZE = 2048


def _central(shape, size: int):
    """Slices of the central ``size x size`` region (the whole image when smaller)."""
    ny, nx = shape
    y0, x0 = max(0, (ny - size) // 2), max(0, (nx - size) // 2)
    return slice(y0, min(ny, y0 + size)), slice(x0, min(nx, x0 + size))


def _window(a, bad, x: int, y: int, r: int) -> np.ndarray:
    """``(2r+1)^2`` float copy of ``a`` around pixel (x, y); NaN outside the image and where ``bad``."""
    ny, nx = a.shape
    out = np.full((2 * r + 1, 2 * r + 1), np.nan)
    x0, x1, y0, y1 = max(0, x - r), min(nx, x + r + 1), max(0, y - r), min(ny, y + r + 1)
    sub = np.where(bad[y0:y1, x0:x1], np.nan, a[y0:y1, x0:x1])
    out[y0 - (y - r):y1 - (y - r), x0 - (x - r):x1 - (x - r)] = sub
    return out


def _peaks(t: np.ndarray, threshold: float, radius: int, valid: np.ndarray):
    """Local maxima of ``t`` above ``threshold`` at least ``radius`` px apart (strongest first).

    ``t`` must be 0 on invalid pixels (so they never win against a positive peak). Only the
    pixels above the threshold are examined, so the cost follows the signal, not the image.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    ys, xs = np.nonzero((t > threshold) & valid)
    if ys.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    ny, nx = t.shape
    if ys.size > 200_000:  # a failed subtraction: one pass over the image is cheaper
        mx = ndimage.maximum_filter(t, size=2 * radius + 1, mode="constant", cval=-np.inf)
        keep = t[ys, xs] >= mx[ys, xs]
    else:
        keep = np.zeros(ys.size, bool)
        for i, (y, x) in enumerate(zip(ys, xs)):
            win = t[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
            keep[i] = t[y, x] >= win.max()
    ys, xs = ys[keep], xs[keep]
    order = np.argsort(-t[ys, xs], kind="stable")
    ys, xs = ys[order], xs[order]
    if ys.size > 1:  # equal maxima on a plateau: keep the first of each group
        pairs = cKDTree(np.column_stack([xs, ys])).query_pairs(radius, output_type="ndarray")
        drop = np.zeros(ys.size, bool)
        for i, j in sorted(map(tuple, np.sort(pairs, axis=1))):
            if not drop[i]:
                drop[j] = True
        ys, xs = ys[~drop], xs[~drop]
    return ys, xs


def _local_flux(d, w, psf, xs, ys):
    """PSF-fit flux and error of point sources centred on pixels ``(xs, ys)`` (weights ``w``)."""
    h0, h1 = psf.shape[0] // 2, psf.shape[1] // 2
    dpad = np.pad(np.where(w > 0, d, 0.0) * w, ((h0, h0), (h1, h1)))
    wpad = np.pad(w, ((h0, h0), (h1, h1)))
    p2 = psf * psf
    flux = np.zeros(len(xs))
    err = np.zeros(len(xs))
    for i, (x, y) in enumerate(zip(xs, ys)):
        num = float((psf * dpad[y:y + 2 * h0 + 1, x:x + 2 * h1 + 1]).sum())
        den = float((p2 * wpad[y:y + 2 * h0 + 1, x:x + 2 * h1 + 1]).sum())
        if den > 0:
            flux[i], err[i] = num / den, 1.0 / np.sqrt(den)
    return flux, err


def _template_distances(template, tmask, fx, fy, radius: int = 30) -> np.ndarray:
    """Distance from each position to the nearest template source within ``radius`` px
    (sep, 5 sigma, robust local sky), NaN when there is none."""
    import sep

    t = np.asarray(template, dtype=np.float64)
    out = np.full(len(fx), np.nan)
    # sep allocates its process-wide pixel stack (1e6 px, set by the engine) on every call:
    # 20-40 ms per stamp; a stack the size of one stamp makes each call ~1 ms. (An
    # extraction of the engine in another thread meanwhile grows the stack again itself.)
    stack = sep.get_extract_pixstack()
    sep.set_extract_pixstack(max(4096, (2 * radius + 1) ** 2))
    try:
        _stamp_distances(t, tmask, fx, fy, radius, out)
    finally:
        sep.set_extract_pixstack(stack)
    return out


def _stamp_distances(t, tmask, fx, fy, radius, out) -> None:
    import sep

    ny, nx = t.shape
    for i, (x, y) in enumerate(zip(fx, fy)):
        cx, cy = int(round(x)), int(round(y))
        x0, x1 = max(0, cx - radius), min(nx, cx + radius + 1)
        y0, y1 = max(0, cy - radius), min(ny, cy + radius + 1)
        stamp = t[y0:y1, x0:x1]
        bad = ~np.isfinite(stamp)
        if tmask is not None:
            bad |= tmask[y0:y1, x0:x1]
        good = stamp[~bad]
        if good.size < 25:
            continue
        med = float(np.median(good))
        rms = float(1.4826 * np.median(np.abs(good - med)))
        if not rms > 0:
            continue
        sub = np.ascontiguousarray(np.where(bad, 0.0, stamp - med))
        try:
            obj = sep.extract(sub, 5.0, err=rms, mask=np.ascontiguousarray(bad), minarea=5)
        except Exception:  # a pathological stamp: no answer rather than no candidates
            continue
        if len(obj):
            dd = np.hypot(obj["x"] + x0 - x, obj["y"] + y0 - y)
            if dd.min() <= radius:
                out[i] = float(dd.min())


def _subpixel(t: np.ndarray, ys, xs):
    """Parabolic refinement of peak positions (at most half a pixel)."""
    ny, nx = t.shape
    fx = xs.astype(float)
    fy = ys.astype(float)
    for i, (y, x) in enumerate(zip(ys, xs)):
        if 0 < x < nx - 1:
            a, b, c = t[y, x - 1], t[y, x], t[y, x + 1]
            den = a - 2 * b + c
            if den < 0:
                fx[i] = x + float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
        if 0 < y < ny - 1:
            a, b, c = t[y - 1, x], t[y, x], t[y + 1, x]
            den = a - 2 * b + c
            if den < 0:
                fy[i] = y + float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return fx, fy


def _moments_shape(v: np.ndarray, dx: np.ndarray, dy: np.ndarray, s_w: float):
    """FWHM and ellipticity of a one-signed stamp from Gaussian-weighted moments."""
    wgt = np.exp(-(dx * dx + dy * dy) / (2 * s_w * s_w))
    i = np.clip(v, 0, None) * wgt
    t = i.sum()
    if not np.isfinite(t) or t <= 0:
        return np.nan, np.nan
    cx, cy = (i * dx).sum() / t, (i * dy).sum() / t
    mxx = (i * (dx - cx) ** 2).sum() / t
    myy = (i * (dy - cy) ** 2).sum() / t
    mxy = (i * (dx - cx) * (dy - cy)).sum() / t
    cm = np.array([[mxx, mxy], [mxy, myy]])
    try:
        # Undo the window: C^-1 = Cm^-1 - W^-1 for Gaussian source and window.
        c_inv = np.linalg.inv(cm) - np.eye(2) / (s_w * s_w)
        lam = np.linalg.eigvalsh(c_inv)
    except np.linalg.LinAlgError:
        return np.nan, np.nan
    if lam.min() <= 0:
        return np.nan, np.nan
    a, b = 1.0 / np.sqrt(lam.min()), 1.0 / np.sqrt(lam.max())
    return float(_FWHM_SIGMA * np.sqrt(a * b)), float(1.0 - b / a)


def _radec(wcs, fx, fy) -> tuple:
    """RA and Dec (deg) of 0-based pixel positions; NaN without a (working) WCS."""
    ra = np.full(len(fx), np.nan)
    dec = np.full(len(fx), np.nan)
    if wcs is not None and len(fx):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                world = wcs.all_pix2world(np.column_stack([fx, fy]), 0)
            ra, dec = world[:, 0].astype(float), world[:, 1].astype(float)
        except Exception:  # a broken WCS must not stop vetting in pixels
            pass
    return ra, dec



def _checked_inputs(diff, mask, template_mask, threshold):
    """The difference as float, its bad pixels (non-finite or masked) and the masks."""
    from diffgui.engine.errors import as_image, as_mask

    d = as_image(diff, "difference image")
    shape = d.shape
    m = as_mask(mask, shape, "mask")
    tm = as_mask(template_mask, shape, "template_mask")
    bad = ~np.isfinite(d)
    for extra in (m, tm):
        if extra is not None:
            bad |= extra
    if bad.all():
        raise InputError("every pixel of the difference image is masked or not finite: nothing to search.")
    if not (np.isfinite(threshold) and threshold > 0):
        raise InputError(f"candidate threshold must be a positive number of sigma, got {threshold!r}")
    return d, bad, m, tm


def _search_fwhm(fwhm, p, sci_prep):
    """The given FWHM, else the PSF stamp's, else the science image's, else 3 (1-30 px)."""
    if fwhm is None:
        fwhm = _stamp_fwhm(p) if p is not None else None
        if fwhm is None and sci_prep is not None:
            fwhm = estimate_fwhm(sci_prep)
        fwhm = float(fwhm) if fwhm else 3.0
    return float(np.clip(fwhm, 1.0, 30.0))


def _pixel_noise(noise, d, bad):
    """Per-pixel noise of the difference (given or the background RMS), its bad pixels
    and the inverse-variance weights."""
    shape = d.shape
    if noise is not None and np.ndim(noise) == 2:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != shape:
            raise InputError(f"noise map has shape {noise.shape} but the difference has shape {shape}")
    if noise is None:
        from diffgui.engine.common.noise import estimate_background

        noise = estimate_background(np.where(bad, 0.0, d), mask=bad).rms
    pix_noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), shape)
    badn = ~np.isfinite(pix_noise) | (pix_noise <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(bad | badn, 0.0, 1.0 / np.where(badn, 1.0, pix_noise) ** 2)
    return pix_noise, badn, weight


def _noise_scale(det, valid, central, preps, fwhm, renormalise, detection):
    """``(scale, sky sigma)``: the robust sigma of the detection map on the empty sky
    of the central region (scale 1 for an S_corr within 15 % of 1 unless forced)."""
    cy, cx = central
    scale = 1.0
    # Sigma of the empty sky only: around stars S_corr is damped by its astrometric
    # term and the difference carries residuals, both of which bias a global MAD.
    src = _source_mask(preps, fwhm)
    dc, vc = det[cy, cx], valid[cy, cx]
    quiet = vc if src is None else vc & ~src
    if quiet.sum() < 0.1 * vc.sum():
        quiet = vc
    step = max(1, int(np.sqrt(dc.size / 250_000)))
    s0 = _robust_sigma(dc[::step, ::step][quiet[::step, ::step]])
    if s0 > 0 and np.isfinite(s0):
        scale = s0
    if renormalise is None and detection == "scorr" and abs(scale - 1.0) <= 0.15:
        scale = 1.0
    return scale, s0


def _signed_peaks(det, valid, threshold, fwhm, signs, edge, max_candidates):
    """Peaks above ``threshold`` of each sign, off the edge, the most significant
    ``max_candidates``: ``(ys, xs, signs, snr)``."""
    radius = max(1, int(round(fwhm)))
    ys_all, xs_all, sg_all = [], [], []
    for sign in signs:
        ys, xs = _peaks(det if sign > 0 else -det, threshold, radius, valid)
        ys_all.append(ys)
        xs_all.append(xs)
        sg_all.append(np.full(ys.size, int(np.sign(sign)), int))
    ys = np.concatenate(ys_all)
    xs = np.concatenate(xs_all)
    sg = np.concatenate(sg_all)
    ny, nx = det.shape
    if edge and edge > 0:
        keep = (xs >= edge) & (ys >= edge) & (xs <= nx - 1 - edge) & (ys <= ny - 1 - edge)
        ys, xs, sg = ys[keep], xs[keep], sg[keep]
    snr = np.abs(det[ys, xs])
    order = np.argsort(-snr, kind="stable")[:int(max_candidates)]
    return ys[order], xs[order], sg[order], snr[order]


def _features(d, bad, pix_noise, badn, xs, ys, sg, fx, fy, fwhm):
    """Per candidate: FWHM, ellipticity, masked and negative fractions, dipole score, flags."""
    n = ys.size
    ny, nx = d.shape
    h = max(2, int(round(0.75 * fwhm)))
    rr = max(3, int(np.ceil(2.0 * fwhm)))
    yy, xx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
    disk = (xx * xx + yy * yy) <= rr * rr
    s_w = 1.5 * fwhm / _FWHM_SIGMA
    fw = np.full(n, np.nan)
    ell = np.full(n, np.nan)
    masked_frac = np.zeros(n)
    neg_frac = np.zeros(n)
    dipole = np.zeros(n)
    flags = np.zeros(n, np.int32)
    for i in range(n):
        x, y, sign = xs[i], ys[i], sg[i]
        v = sign * _window(d, bad, x, y, rr)
        sn = _window(pix_noise, badn, x, y, rr)
        box = v[rr - h:rr + h + 1, rr - h:rr + h + 1]
        finite = np.isfinite(box)
        masked_frac[i] = 1.0 - finite.mean()
        neg_frac[i] = float((box[finite] < 0).mean()) if finite.any() else 0.0
        good = disk & np.isfinite(v) & np.isfinite(sn)
        if good.any():
            vv, ss = v[good], sn[good]
            pos = vv[vv > 2 * ss].sum()
            neg = -vv[vv < -2 * ss].sum()
            dipole[i] = min(pos, neg) / max(pos, neg) if min(pos, neg) > 0 else 0.0
            vz = np.where(good, v, 0.0)
            fw[i], ell[i] = _moments_shape(vz, xx + (x - fx[i]), yy + (y - fy[i]), s_w)
        if masked_frac[i] > 0:
            flags[i] |= FLAG_MASKED
        if min(fx[i], fy[i], nx - 1 - fx[i], ny - 1 - fy[i]) < 2 * fwhm:
            flags[i] |= FLAG_EDGE
    return {"fwhm": fw, "ellipticity": ell, "masked_frac": masked_frac, "neg_frac": neg_frac,
            "dipole": dipole, "flags": flags}


def _template_distance(template_objects, template, tm, fx, fy):
    """Distance of each candidate to the nearest template source (NaN: none known)."""
    from scipy.spatial import cKDTree

    n = fx.size
    dist = np.full(n, np.nan)
    if n and template_objects is not None:
        if len(template_objects):
            tree = cKDTree(np.column_stack([np.asarray(template_objects["x"], float),
                                            np.asarray(template_objects["y"], float)]))
            dist, _ = tree.query(np.column_stack([fx, fy]))
    elif n and template is not None:
        dist = _template_distances(template, tm, fx, fy)
    return dist
