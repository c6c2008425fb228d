"""Generating a simulated pair: :func:`simulate_pair` and its steps (options,
catalogue, noise, tables; the transients are in :mod:`.transients`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from astropy.table import Table

from diffgui.engine.errors import InputError
from diffgui.engine.simulation.pair import _ROWS, SimulatedPair, _fill_sky, _noise_map
from diffgui.engine.simulation.psf_field import _check_psf, _gradient, _PSFField, _sky_gradients
from diffgui.engine.simulation.transients import (_listed_transients, _parse_transients, _placed_transients,
                                                  _render_transients)

def _power_law_fluxes(rng, n, flux_range, slope):
    """Fluxes with N(>F) proportional to F**-slope on flux_range (slope 0: log-uniform)."""
    fmin, fmax = float(flux_range[0]), float(flux_range[1])
    if not (0 < fmin <= fmax and np.isfinite(fmax)):
        raise InputError(f"star_flux_range must be 0 < min <= max, got {flux_range!r}.")
    u = rng.random(n)
    if fmin == fmax:
        return np.full(n, fmin)
    if abs(slope) < 1e-12:
        return fmin * (fmax / fmin) ** u
    a = -float(slope)
    lo, hi = fmin ** a, fmax ** a
    return (lo + u * (hi - lo)) ** (1.0 / a)


def _positive(name, value, allow_zero=False):
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}.")
    return v


def simulate_pair(
    shape=(512, 512),
    n_stars=None,
    star_flux_range=(10 ** 2.5, 10 ** 4.7),
    flux_slope=0.0,
    psf="gaussian",
    moffat_beta=3.0,
    image_fwhm=3.5,
    template_fwhm=2.5,
    image_fwhm_gradient=None,
    template_fwhm_gradient=None,
    flux_scale=1.1,
    flux_scale_gradient=None,
    image_sky=1000.0,
    template_sky=500.0,
    sky_gradient=None,
    image_gain=2.0,
    template_gain=10.0,
    image_readnoise=10.0,
    template_readnoise=3.0,
    saturation=None,
    template_shift=(0.0, 0.0),
    transients=None,
    transient_snr_range=(5.0, 100.0),
    edge=10,
    seed=None,
    image_ellipticity=None,
    template_ellipticity=None,
):
    """Simulate an aligned science/template pair with known truth.

    Defaults follow the stdpipe peer-measurement pair (stdpipe-reference.md §6):
    Gaussian PSFs of FWHM 3.5 (science) and 2.5 (template), skies 1000 and 500 ADU,
    gains 2 and 10 e-/ADU, read noise 10 and 3 e-, science fluxes x1.1.

    Parameters
    ----------
    shape : (int, int)
        ``(height, width)``.
    n_stars : int, optional
        Number of stars; default 1500 per 1024 x 1024 pixels (375 at 512 x 512).
    star_flux_range : (float, float)
        Template-ADU flux range of the stars.
    flux_slope : float
        Power-law index ``a`` of the cumulative counts ``N(>F) ~ F**-a`` (0 gives
        log-uniform fluxes as stdpipe draws them; 1.5 is the Euclidean slope).
    psf : {'gaussian', 'moffat'}
        PSF profile of both images.
    moffat_beta : float
        Moffat ``beta`` (> 1).
    image_fwhm, template_fwhm : float
        FWHM (pixels, before pixel integration) at the image centre.
    image_fwhm_gradient, template_fwhm_gradient : float or (float, float), optional
        Fractional FWHM change: a scalar is the change from corner (0, 0) to the
        opposite corner, a pair ``(gx, gy)`` the change across each axis.
    flux_scale : float
        Science / template flux ratio at the centre (stdpipe's ``F_r`` is its inverse).
    flux_scale_gradient : float or (float, float), optional
        Fractional change of ``flux_scale`` across the field, as for FWHM.
    image_sky, template_sky : float
        Sky levels (ADU) at the centre.
    sky_gradient : optional
        Sky change in ADU across the field per axis: ``(gx, gy)`` for the science
        image only, ``((gx, gy), (gx, gy))`` for science and template, or
        ``{'image': (gx, gy), 'template': (gx, gy)}``.
    image_gain, template_gain : float
        Gains (e-/ADU).
    image_readnoise, template_readnoise : float
        Read noise (e-).
    saturation : float or (float, float), optional
        Saturation level in ADU (one for both images or one per image).  Pixels are
        clipped at it, ``image_mask``/``template_mask`` mark them and the stars
        table flags stars with a clipped pixel within 1 pixel of their centre.
    template_shift : (float, float)
        ``(dx, dy)``: template position minus science position of every source.
    transients : int or list of dict, optional
        An int places that many transients in star-free spots, kinds cycling
        'new', 'brighten', 'fade', with ideal S/N log-spaced over
        ``transient_snr_range`` (each kind spans the range; fading hosts alternate
        between vanishing and halving).  A list gives them explicitly: dicts with
        ``x, y`` (science frame), ``flux`` (science ADU; the sign is set by the kind),
        ``kind`` ('new' default, 'brighten': extra flux on a host star, 'fade': a host
        star losing ``|flux|``) and optionally ``host_flux`` (template ADU of the host
        star that is created at ``(x, y)``; default ``|flux| / flux_scale``, so a
        'fade' star vanishes and a 'brighten' star doubles).
    transient_snr_range : (float, float)
        Ideal S/N range for transients given as a count.
    edge : int
        Margin (pixels) kept free of star centres; transients keep at least the PSF
        footprint radius from the edges.
    seed : int, optional
        Seed of ``numpy.random.default_rng``.  Star catalogue, transient placement,
        science noise and template noise use independent child streams.  None draws
        fresh entropy and records it in ``truth['seed']``.
    image_ellipticity, template_ellipticity : float or (float, float), optional
        Elliptical PSFs: ellipticity ``1 - b/a`` at the field centre and at the
        corners (linear in the distance from the centre; a scalar is the same
        everywhere), with the major axis tangential to the centre, so that the
        position angle turns around the field as optical aberrations make it.
        None (default): round PSFs.

    Returns
    -------
    SimulatedPair
    """
    o = _checked_options(shape, n_stars, psf, moffat_beta, image_fwhm, template_fwhm, flux_scale,
                         flux_scale_gradient, image_sky, template_sky, sky_gradient, image_gain,
                         template_gain, image_readnoise, template_readnoise, saturation,
                         template_shift, edge)
    h, w = o.shape
    n_tr, tr_list = _parse_transients(transients)

    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    root = np.random.default_rng(seed)
    rng_cat, rng_tr, rng_img, rng_tpl = root.spawn(4)

    ipsf = _PSFField(o.psf, o.moffat_beta, o.image_fwhm,
                     _gradient(image_fwhm_gradient, "image_fwhm_gradient"), (h, w),
                     _ellipticity(image_ellipticity, "image_ellipticity"))
    tpsf = _PSFField(o.psf, o.moffat_beta, o.template_fwhm,
                     _gradient(template_fwhm_gradient, "template_fwhm_gradient"), (h, w),
                     _ellipticity(template_ellipticity, "template_ellipticity"))
    truth = _truth(o, seed, ipsf, tpsf, star_flux_range, flux_slope)
    truth["image_ellipticity"], truth["template_ellipticity"] = ipsf.ellipticity, tpsf.ellipticity

    # ---- catalogue -------------------------------------------------------------
    sx = rng_cat.uniform(o.edge, w - 1 - o.edge, o.n_stars)
    sy = rng_cat.uniform(o.edge, h - 1 - o.edge, o.n_stars)
    tflux = _power_law_fluxes(rng_cat, o.n_stars, star_flux_range, flux_slope)
    pair = SimulatedPair(
        image=None, template=None, image_noise=None, template_noise=None,
        image_model=np.empty((h, w)), template_model=np.empty((h, w)),
        image_mask=None, template_mask=None, stars=None,
        transients=Table(names=("x", "y", "flux"), dtype=(float, float, float)),
        truth=truth, _image_psf=ipsf, _template_psf=tpsf,
    )
    shift = o.shift
    _fill_sky(pair.image_model, truth, "image")
    _fill_sky(pair.template_model, truth, "template")
    tpsf.render(pair.template_model, sx + shift[0], sy + shift[1], tflux)
    ipsf.render(pair.image_model, sx, sy, pair.flux_scale_at(sx, sy) * tflux)
    # Template noise is static; needed by ideal_snr while choosing transient fluxes.
    pair.template_noise = _noise_map(pair.template_model, o.template_gain, o.template_readnoise)

    # ---- transients --------------------------------------------------------------
    if n_tr:
        tr_rows = _placed_transients(pair, o, n_tr, rng_tr, transient_snr_range)
    else:
        tr_rows = _listed_transients(pair, tr_list)
    sx, sy, tflux, star_of_tr, tr_of_star = _render_transients(pair, o, tr_rows, sx, sy, tflux)

    _observe(pair, o, rng_img, rng_tpl)

    # ---- tables --------------------------------------------------------------------
    pair.stars = _star_table(pair, tr_rows, sx, sy, tflux, star_of_tr, tr_of_star, shift)
    pair.transients["ideal_snr"] = (
        pair.ideal_snr(pair.transients["flux"], pair.transients["x"], pair.transients["y"])
        if tr_rows else np.zeros(0)
    )
    return pair


def _observe(pair, o, rng_img, rng_tpl):
    """The noisy images from the models (image noise map too), saturated pixels clipped and masked."""
    pair.image_noise = _noise_map(pair.image_model, o.image_gain, o.image_readnoise)
    pair.image = _noisy(rng_img, pair.image_model, o.image_gain, o.image_readnoise)
    pair.template = _noisy(rng_tpl, pair.template_model, o.template_gain, o.template_readnoise)
    if o.sat_img is not None:
        pair.image_mask = pair.image >= o.sat_img
        np.minimum(pair.image, o.sat_img, out=pair.image)
        pair.template_mask = pair.template >= o.sat_tpl
        np.minimum(pair.template, o.sat_tpl, out=pair.template)


def _ellipticity(value, name):
    """None, or ``(at the centre, at the corners)`` each in [0, 0.8]."""
    if value is None:
        return None
    arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 0.8:
        raise InputError(f"{name} must be an ellipticity or (centre, corners) pair within "
                         f"0-0.8, got {value!r}.")
    return float(arr[0]), float(arr[1])


def _checked_options(shape, n_stars, psf, moffat_beta, image_fwhm, template_fwhm, flux_scale,
                     flux_scale_gradient, image_sky, template_sky, sky_gradient, image_gain,
                     template_gain, image_readnoise, template_readnoise, saturation,
                     template_shift, edge):
    """:func:`simulate_pair`'s scalar options validated and normalised, as a namespace."""
    try:
        h, w = (int(v) for v in shape)
    except Exception:
        raise InputError(f"shape must be (height, width), got {shape!r}.") from None
    if h < 16 or w < 16:
        raise InputError(f"shape must be at least 16 x 16, got {shape!r}.")
    o = SimpleNamespace(shape=(h, w))
    o.psf = _check_psf(psf, moffat_beta)
    o.moffat_beta = float(moffat_beta)
    o.image_fwhm = _positive("image_fwhm", image_fwhm)
    o.template_fwhm = _positive("template_fwhm", template_fwhm)
    o.flux_scale = _positive("flux_scale", flux_scale)
    o.image_gain = _positive("image_gain", image_gain)
    o.template_gain = _positive("template_gain", template_gain)
    o.image_readnoise = _positive("image_readnoise", image_readnoise, allow_zero=True)
    o.template_readnoise = _positive("template_readnoise", template_readnoise, allow_zero=True)
    o.image_sky = _positive("image_sky", image_sky, allow_zero=True)
    o.template_sky = _positive("template_sky", template_sky, allow_zero=True)
    o.fs_grad = _gradient(flux_scale_gradient, "flux_scale_gradient")
    o.img_sky_grad, o.tpl_sky_grad = _sky_gradients(sky_gradient)
    for name, sky, (gx, gy) in (("image", o.image_sky, o.img_sky_grad),
                                ("template", o.template_sky, o.tpl_sky_grad)):
        if sky - abs(gx) / 2 - abs(gy) / 2 < 0:
            raise InputError(f"the {name} sky gradient makes the sky negative somewhere.")
    if 1.0 - abs(o.fs_grad[0]) / 2 - abs(o.fs_grad[1]) / 2 <= 0:
        raise InputError("flux_scale_gradient makes the flux scale non-positive somewhere.")
    if saturation is None:
        o.sat_img = o.sat_tpl = None
    else:
        sat = np.atleast_1d(np.asarray(saturation, dtype=float))
        if sat.size not in (1, 2):
            raise InputError(f"saturation must be None, a level or (image, template), got {saturation!r}.")
        o.sat_img = _positive("saturation", sat[0])
        o.sat_tpl = _positive("saturation", sat[-1])
    try:
        o.shift = (float(template_shift[0]), float(template_shift[1]))
    except Exception:
        raise InputError(f"template_shift must be (dx, dy), got {template_shift!r}.") from None
    o.edge = int(edge)
    if o.edge < 0 or 2 * o.edge >= min(h, w) - 1:
        raise InputError(f"edge {o.edge} leaves no room in a {h} x {w} image.")
    if n_stars is None:
        n_stars = int(round(1500 * h * w / 1024 ** 2))
    o.n_stars = int(n_stars)
    if o.n_stars < 0:
        raise InputError(f"n_stars must be >= 0, got {o.n_stars}.")
    return o


def _truth(o, seed, ipsf, tpsf, star_flux_range, flux_slope):
    """The ``truth`` dict of a simulated pair."""
    return {
        "shape": o.shape, "seed": seed, "psf": o.psf, "moffat_beta": o.moffat_beta,
        "image_fwhm": o.image_fwhm, "template_fwhm": o.template_fwhm,
        "image_fwhm_gradient": ipsf.gradient, "template_fwhm_gradient": tpsf.gradient,
        "flux_scale": o.flux_scale, "flux_scale_gradient": o.fs_grad,
        "stdpipe_flux_ratio": 1.0 / o.flux_scale,
        "image_sky": o.image_sky, "template_sky": o.template_sky,
        "image_sky_gradient": o.img_sky_grad, "template_sky_gradient": o.tpl_sky_grad,
        "image_gain": o.image_gain, "template_gain": o.template_gain,
        "image_readnoise": o.image_readnoise, "template_readnoise": o.template_readnoise,
        "saturation": (o.sat_img, o.sat_tpl), "template_shift": o.shift,
        "n_stars": o.n_stars, "star_flux_range": tuple(float(v) for v in star_flux_range),
        "flux_slope": float(flux_slope), "edge": o.edge,
        "image_psf_radius": ipsf.radius, "template_psf_radius": tpsf.radius,
        "image_psf_enclosed": ipsf.enclosed, "template_psf_enclosed": tpsf.enclosed,
        "flux_scale_convention": "science / template (stdpipe F_r = 1 / flux_scale)",
    }


def _star_table(pair, tr_rows, sx, sy, tflux, star_of_tr, tr_of_star, shift):
    """The ``stars`` table (hosts of transients included, their image flux changed)."""
    ipsf, tpsf = pair._image_psf, pair._template_psf
    iflux = pair.flux_scale_at(sx, sy) * tflux
    for i, r in enumerate(tr_rows):
        if star_of_tr[i] >= 0:
            iflux[star_of_tr[i]] += r["flux"]
    return Table(
        {
            "id": np.arange(sx.size),
            "x": sx, "y": sy,
            "template_x": sx + shift[0], "template_y": sy + shift[1],
            "template_flux": tflux, "image_flux": iflux,
            "flux_scale": pair.flux_scale_at(sx, sy),
            "image_fwhm": ipsf.fwhm_at(sx, sy),
            "template_fwhm": tpsf.fwhm_at(sx + shift[0], sy + shift[1]),
            "saturated": _saturated_near(pair.image_mask, sx, sy),
            "template_saturated": _saturated_near(pair.template_mask, sx + shift[0], sy + shift[1]),
            "variable": tr_of_star >= 0,
            "transient": tr_of_star,
        }
    )


def _noisy(rng, model, gain, readnoise):
    """Poisson (electrons) + Gaussian read noise, back in ADU (row blocks: the
    realisation is fixed by the seed and the image shape)."""
    out = np.empty_like(model)
    for r0 in range(0, model.shape[0], _ROWS):
        blk = out[r0:r0 + _ROWS]
        np.maximum(model[r0:r0 + _ROWS], 0.0, out=blk)
        blk *= gain
        blk[:] = rng.poisson(blk)
        if readnoise > 0:
            blk += rng.normal(0.0, readnoise, blk.shape)
        blk /= gain
    return out


def _saturated_near(mask, x, y):
    n = np.size(x)
    if mask is None or n == 0:
        return np.zeros(n, dtype=bool)
    h, w = mask.shape
    ix = np.rint(x).astype(int)
    iy = np.rint(y).astype(int)
    out = np.zeros(n, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            xx = np.clip(ix + dx, 0, w - 1)
            yy = np.clip(iy + dy, 0, h - 1)
            out |= mask[yy, xx]
    return out

