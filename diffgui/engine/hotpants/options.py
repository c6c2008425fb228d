"""The options run_hotpants derives from the data (stdpipe's choices) and stamp
positions from an object table."""

from __future__ import annotations

import math

import numpy as np

from diffgui.engine.errors import InputError, make_logger

# ---- options run_hotpants derives from the data --------------------------------------------

def _sample(data, bad, n=300_000):
    step = max(1, int(math.sqrt(data.size / n)))
    d = data[::step, ::step]
    b = bad[::step, ::step] if bad is not None else None
    v = d[~b] if b is not None else d.ravel()
    return v[np.isfinite(v)]


def _limits(data, bad):
    """stdpipe's thresholds: lower = median - 10 mad_std, upper = max + 1% of
    the range, or just below a saturation plateau when many pixels share the
    maximum value."""
    v = _sample(data, bad)
    if v.size == 0:
        raise InputError("no usable pixel to derive thresholds from")
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    use = np.isfinite(data) if bad is None else ~bad
    vmax = float(np.max(data, where=use, initial=-np.inf))
    vmin = float(np.min(data, where=use, initial=np.inf))
    lower = med - 10.0 * mad
    if lower >= vmin and mad == 0:
        lower = vmin - 1.0
    nsat = int(np.count_nonzero((data >= vmax - 1e-6 * max(abs(vmax), 1.0)) & use))
    if nsat >= 5 and vmax > med + 50 * max(mad, 1e-12):
        upper = vmax - 1e-6 * max(abs(vmax), 1.0)
        saturated = True
    else:
        upper = vmax + 0.01 * (vmax - vmin)
        saturated = False
    if not upper > lower:
        upper = lower + max(abs(lower), 1.0)
    # A sky level within a few sigma of zero: the background was subtracted.
    sky_subtracted = med < 5.0 * mad
    return lower, upper, saturated, sky_subtracted


def _round_sig(x, digits=6):
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def derive_options(image, template, mask=None, template_mask=None, *, image_fwhm=None,
                   template_fwhm=None, image_gain=None, template_gain=1000, rel_r=3,
                   rel_rss=4, nx=1, ny=None, extra=None, image_noise=False,
                   template_noise=False, log=None) -> dict:
    """HOTPANTS options as run_hotpants chooses them, ``extra`` overriding.

    The choices follow stdpipe's wrapper: il/tl = median - 10 mad_std and
    iu/tu just above the maximum (or just below a saturation plateau),
    iuk/tuk = iu/tu; ig/tg from the gains; r = ceil(rel_r FWHM) and
    rss = ceil(rel_rss FWHM) with the larger FWHM; the recommended
    ng = 3 6 0.5s 4 s 2 2s with s = sigma_match (at least 1 px) when the
    FWHMs differ; the sharper image is convolved (the template when the
    FWHMs are unknown, both tried when they differ by less than 10 %); the
    output is in the science image's flux units
    (n = i); ko = 0 (the kernel varies through the nx x ny regions, as in
    stdpipe) but bgo = 1, since stdpipe's bgo = 0 leaves any differential
    sky gradient in the difference.

    Returns
    -------
    dict
        Option name -> value, ready for :func:`build_argv` or the native backend.
    """
    log = log or make_logger(False)
    extra = dict(extra or {})
    o = {}
    il, iu, isat, isub = _limits(image, mask)
    tl, tu, tsat, tsub = _limits(template, template_mask)
    o["tu"], o["tuk"], o["tl"] = _round_sig(tu), _round_sig(tu), _round_sig(tl)
    o["iu"], o["iuk"], o["il"] = _round_sig(iu), _round_sig(iu), _round_sig(il)
    for name, sat, val in (("science image", isat, iu), ("template", tsat, tu)):
        if sat:
            log(f"{name}: saturation plateau found at {val:g}, pixels at it are masked")
    if image_gain is not None:
        o["ig"] = float(image_gain)
    if template_gain is not None:
        o["tg"] = float(template_gain)
    fwhms = [f for f in (image_fwhm, template_fwhm) if f is not None]
    if fwhms:
        f = max(float(v) for v in fwhms)
        o["r"] = int(math.ceil(rel_r * f))
        o["rss"] = int(math.ceil(rel_rss * f))
    if image_fwhm is not None and template_fwhm is not None and image_fwhm != template_fwhm:
        s = max(1.0, math.sqrt(abs(image_fwhm ** 2 - template_fwhm ** 2)) / 2.35)
        o["ng"] = (3, 6, round(0.5 * s, 4), 4, round(s, 4), 2, round(2.0 * s, 4))
    if image_fwhm is not None and template_fwhm is not None:
        if abs(image_fwhm - template_fwhm) < 0.1 * max(image_fwhm, template_fwhm):
            o["c"] = "b"  # too close to call: let the fit choose
        else:
            o["c"] = "t" if template_fwhm <= image_fwhm else "i"
    else:
        o["c"] = "t"
    o["n"] = "i"
    o["ko"] = 0
    o["bgo"] = 1
    o["nrx"] = int(nx)
    o["nry"] = int(ny if ny is not None else nx)
    o["v"] = 1
    for k, v in extra.items():
        if v is not None:
            o[k] = v
        else:
            o.pop(k, None)
    if "r" in o and "rss" in o and o["rss"] < o["r"]:
        raise InputError(f"rss ({o['rss']}) must be >= r ({o['r']}): HOTPANTS stops otherwise.")
    for p in "ti":
        if p + "u" in extra and p + "uk" not in extra:
            o[p + "uk"] = o[p + "u"]
        if o.get(p + "u") is not None and o.get(p + "l") is not None and not o[p + "u"] > o[p + "l"]:
            raise InputError(f"{p}u ({o[p + 'u']}) must be above {p}l ({o[p + 'l']}).")
    for name, sub, given, arg in (("science image", isub, image_noise, "err"),
                                  ("template", tsub, template_noise, "template_err")):
        if sub and not given:
            # HOTPANTS's Poisson model |data|/gain then misses the sky noise.
            log(f"WARNING: the {name} looks background-subtracted but has no noise map: "
                f"HOTPANTS's noise model will be far too low; pass {arg}=True or a sigma map.")
    for p, given, name in (("i", image_noise, "science image"), ("t", template_noise, "template")):
        if not given and o.get(p + "r") is None:
            log(f"note: no read noise for the {name} (extra['{p}r'], e-): HOTPANTS's noise "
                "model assumes 0")
    if not o.get("bgo"):
        log("note: bgo=0 fits a constant differential background per region; a sky "
            "gradient needs bgo >= 1")
    return o


def stamps_from_obj(obj):
    """0-based (x, y) centres from an object table (x, y columns), or None."""
    if obj is None:
        return None
    try:
        x = np.asarray(obj["x"], dtype=float)
        y = np.asarray(obj["y"], dtype=float)
    except (KeyError, ValueError, TypeError, IndexError):
        raise InputError("obj must be a table with 'x' and 'y' columns (0-based pixels)") from None
    ok = np.isfinite(x) & np.isfinite(y)
    return np.stack([x[ok], y[ok]], axis=1)

