"""Field diagnostics before any run: how the PSFs and the flux ratio vary across the field.

Stars detected in both images are matched; their FWHM, ellipticity and flux
ratio are summarised as maps on a grid of tiles, and the variation is turned
into plain advice on the settings that matter (spatial kernel order, ZOGY tiles,
kernel size, convolution direction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffgui.engine.errors import InputError, as_image, as_mask

__all__ = ["FieldDiagnostics", "diagnose_field", "MIN_STARS"]

#: Matched stars needed to say anything about the field.
MIN_STARS = 10


@dataclass
class FieldDiagnostics:
    """Maps (tile medians, row 0 = bottom of the image) and advice.

    Attributes
    ----------
    maps : dict
        ``science_fwhm``, ``template_fwhm``, ``science_ellipticity``,
        ``template_ellipticity``, ``flux_ratio`` (science / template),
        ``count``: arrays of shape ``(grid, grid)``; NaN where a tile has
        fewer than 3 matched stars.
    variation : dict
        Relative range ``(max - min) / median`` of the tile medians of FWHMs and
        flux ratio; absolute range of the ellipticities.
    medians : dict
        Field medians of the same quantities.
    advice : list of str
        Plain sentences, most important first.
    n_matched : int
        Stars matched between the images.
    """

    maps: dict
    variation: dict
    medians: dict
    advice: list = field(default_factory=list)
    n_matched: int = 0


def _stars(img, mask, thresh, saturation):
    from diffgui.engine.common.detection import detect_objects

    t = detect_objects(img, mask=mask, thresh=thresh, saturation=saturation)
    if len(t) == 0:
        return t
    sn = np.asarray(t["flux"], float) / np.maximum(np.asarray(t["fluxerr"], float), 1e-30)
    good = (sn >= 20) & ((np.asarray(t["flags"], int) & 0x11E) == 0)
    good &= np.isfinite(np.asarray(t["fwhm"], float)) & (np.asarray(t["fwhm"], float) > 0.5)
    return t[good]


def _match(a, b, radius):
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(np.column_stack([b["x"], b["y"]]))
    d, j = tree.query(np.column_stack([a["x"], a["y"]]), distance_upper_bound=radius)
    ok = np.isfinite(d)
    return np.flatnonzero(ok), j[ok]


def _tile_medians(x, y, values, shape, grid):
    h, w = shape
    tx = np.clip((x * grid / w).astype(int), 0, grid - 1)
    ty = np.clip((y * grid / h).astype(int), 0, grid - 1)
    out = np.full((grid, grid), np.nan)
    count = np.zeros((grid, grid), int)
    for j in range(grid):
        for i in range(grid):
            sel = (tx == i) & (ty == j) & np.isfinite(values)
            count[j, i] = sel.sum()
            if count[j, i] >= 3:
                out[j, i] = np.median(values[sel])
    return out, count


def _rel_range(m):
    v = m[np.isfinite(m)]
    if v.size < 2:
        return 0.0
    return float((v.max() - v.min()) / abs(np.median(v)))


def diagnose_field(image, template, mask=None, template_mask=None, grid: int = 3,
                   saturation=None, thresh: float = 5.0) -> FieldDiagnostics:
    """Measure PSF and flux-ratio variation across the field and advise settings.

    Parameters
    ----------
    image, template : ndarray
        Aligned science and template images.
    mask, template_mask : ndarray of bool, optional
        Bad pixels (True).
    grid : int
        Tiles per side of the maps (>= 1).
    saturation : float, optional
        Level above which stars are not used.
    thresh : float
        Detection threshold in sigma.

    Returns
    -------
    FieldDiagnostics

    Raises
    ------
    InputError
        Different shapes, a bad grid, or fewer than :data:`MIN_STARS` matched stars.
    """
    image, template = as_image(image, "image"), as_image(template, "template")
    if image.shape != template.shape:
        raise InputError(f"image {image.shape} and template {template.shape} differ in shape")
    if int(grid) < 1 or int(grid) > 16:
        raise InputError(f"grid must be 1-16 tiles per side, got {grid}")
    grid = int(grid)
    mask = as_mask(mask, image.shape, "mask")
    template_mask = as_mask(template_mask, image.shape, "template_mask")
    s, t = _stars(image, mask, thresh, saturation), _stars(template, template_mask, thresh, saturation)
    i, j = _match(s, t, 1.5)
    if len(i) < MIN_STARS:
        raise InputError(f"only {len(i)} bright unflagged stars are found in both images: too few to "
                         f"diagnose the field (need {MIN_STARS}); is the pair aligned, are there stars?")
    s, t = s[i], t[j]
    x, y = np.asarray(s["x"], float), np.asarray(s["y"], float)
    q = {"science_fwhm": np.asarray(s["fwhm"], float), "template_fwhm": np.asarray(t["fwhm"], float),
         "science_ellipticity": 1 - np.asarray(s["b"], float) / np.asarray(s["a"], float),
         "template_ellipticity": 1 - np.asarray(t["b"], float) / np.asarray(t["a"], float),
         "flux_ratio": np.asarray(s["flux"], float) / np.asarray(t["flux"], float)}
    maps, count = {}, None
    for name, v in q.items():
        maps[name], count = _tile_medians(x, y, v, image.shape, grid)
    maps["count"] = count
    variation = {k: _rel_range(maps[k]) for k in ("science_fwhm", "template_fwhm", "flux_ratio")}
    for k in ("science_ellipticity", "template_ellipticity"):
        v = maps[k][np.isfinite(maps[k])]
        variation[k] = float(v.max() - v.min()) if v.size else 0.0
    medians = {k: float(np.median(v[np.isfinite(v)])) for k, v in q.items()}
    return FieldDiagnostics(maps, variation, medians, _advice(variation, medians), int(len(i)))


def _advice(var, med) -> list:
    out = []
    fw = max(var["science_fwhm"], var["template_fwhm"])
    which = "science" if var["science_fwhm"] >= var["template_fwhm"] else "template"
    if fw > 0.25:
        out.append(f"The {which} FWHM varies by {100 * fw:.0f} % across the field: use a spatial kernel "
                   "order of 2 (HOTPANTS ko, SFFT kernel_poly_order) or ZOGY tiles nx = ny = 3.")
    elif fw > 0.1:
        out.append(f"The {which} FWHM varies by {100 * fw:.0f} % across the field: use a spatial kernel "
                   "order of 1 (HOTPANTS ko, SFFT kernel_poly_order) or ZOGY tiles nx = ny = 2.")
    else:
        out.append(f"The PSFs are nearly constant (FWHM within {100 * fw:.0f} %): a constant kernel "
                   "(HOTPANTS ko 0, SFFT kernel_poly_order 0, ZOGY one tile) is enough.")
    ell = max(med["science_ellipticity"], med["template_ellipticity"])
    dell = max(var["science_ellipticity"], var["template_ellipticity"])
    if ell > 0.15 or dell > 0.1:
        out.append(f"Stars are elongated (median ellipticity {ell:.2f}, changing by {dell:.2f} across "
                   "the field): the kernel must change shape, so use a spatial order of at least 1 "
                   "(HOTPANTS ko, SFFT kernel_poly_order) or ZOGY tiles, and an SFFT kernel_shape "
                   "of at least twice the FWHM.")
    if var["flux_ratio"] > 0.1:  # below that, aperture losses of a varying PSF dominate
        out.append(f"The flux ratio varies by {100 * var['flux_ratio']:.0f} % across the field "
                   "(transparency or flat field): let the flux scale vary (SFFT flux_poly_order 1-2, "
                   "HOTPANTS ko >= 1; ZOGY fits it per tile).")
    if med["science_fwhm"] < med["template_fwhm"] * 0.95:
        out.append(f"The science image is sharper than the template (FWHM {med['science_fwhm']:.2f} vs "
                   f"{med['template_fwhm']:.2f} px): convolve the science image (HOTPANTS c i), or "
                   "use ZOGY, which needs no direction.")
    return out
