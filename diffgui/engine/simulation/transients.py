"""Transients of a simulated pair: parsing the ``transients`` option, star-free spots,
fluxes for a target S/N, host stars, and rendering them into the models."""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from diffgui.engine.errors import InputError
from diffgui.engine.simulation.pair import _noise_map, _star_light_integral

_KINDS = ("new", "brighten", "fade")


def _parse_transients(transients):
    """Return (count, list_of_dicts): exactly one of the two is used."""
    if transients is None:
        return 0, []
    if isinstance(transients, (int, np.integer)):
        if transients < 0:
            raise InputError(f"transients count must be >= 0, got {transients}.")
        return int(transients), []
    out = []
    for i, t in enumerate(transients):
        if not isinstance(t, dict):
            raise InputError(f"transients[{i}] must be a dict, got {type(t).__name__}.")
        missing = {"x", "y", "flux"} - set(t)
        if missing:
            raise InputError(f"transients[{i}] lacks {sorted(missing)}: give x, y, flux (science ADU).")
        kind = str(t.get("kind", "new")).lower()
        if kind not in _KINDS:
            raise InputError(f"transients[{i}]['kind'] must be one of {_KINDS}, got {kind!r}.")
        flux = float(t["flux"])
        if not np.isfinite(flux) or flux == 0:
            raise InputError(f"transients[{i}]['flux'] must be finite and non-zero.")
        out.append({"x": float(t["x"]), "y": float(t["y"]), "kind": kind,
                    "flux": -abs(flux) if kind == "fade" else abs(flux),
                    "host_flux": t.get("host_flux")})
    return 0, out


def _star_free_spots(rng, n, integral, noise_sigma, margin, min_sep):
    """Pick n positions at least min_sep apart where the star light in a box around
    them is below the box's noise (1 sigma * sqrt(npix): no star above S/N ~3 there);
    the limits are relaxed step by step when the field is too crowded or too small."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    if w - 1 - 2 * margin <= 0 or h - 1 - 2 * margin <= 0:
        raise InputError(f"the image is too small to keep transients {margin} px from its edges.")
    box = max(2, int(round(min_sep / 4)))
    npix = (2 * box + 1) ** 2
    limit = noise_sigma * math.sqrt(npix)
    chosen = []
    # Relax the star-light limit first, then the separation (small images).
    for relax, sep_factor in ((1.0, 1.0), (3.0, 1.0), (10.0, 1.0), (10.0, 0.75), (30.0, 0.5)):
        sep2 = (min_sep * sep_factor) ** 2
        for _ in range(10):
            m = max(200, 50 * n)
            cx = rng.uniform(margin, w - 1 - margin, m)
            cy = rng.uniform(margin, h - 1 - margin, m)
            ix, iy = np.rint(cx).astype(int), np.rint(cy).astype(int)
            x0, x1 = np.clip(ix - box, 0, w), np.clip(ix + box + 1, 0, w)
            y0, y1 = np.clip(iy - box, 0, h), np.clip(iy + box + 1, 0, h)
            s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            for j in np.flatnonzero(s < limit * relax):
                if all((cx[j] - a) ** 2 + (cy[j] - b) ** 2 >= sep2 for a, b in chosen):
                    chosen.append((cx[j], cy[j]))
                    if len(chosen) == n:
                        return np.array(chosen)
    raise InputError(
        f"could not place {n} transients in star-free spots at least {min_sep / 2:.0f} px apart: "
        "use fewer transients, fewer stars or a larger image."
    )


def _flux_for_snr(pair_like, target, x, y):
    """Flux (science ADU) whose ideal S/N at (x, y) is ``target`` (fixed point)."""
    f = target * 10.0
    for _ in range(60):
        snr = pair_like.ideal_snr(f, x, y)
        if snr <= 0:
            break
        nf = f * target / snr
        if abs(nf - f) < 1e-6 * f:
            f = nf
            break
        f = nf
    return f


def _placed_transients(pair, o, n_tr, rng_tr, transient_snr_range):
    """``n_tr`` transients in star-free spots, kinds cycling, S/N log-spaced."""
    ipsf, tpsf, shift = pair._image_psf, pair._template_psf, o.shift
    margin = max(o.edge, ipsf.radius + 2, tpsf.radius + 2 + int(math.ceil(max(map(abs, shift)))))
    integral = _star_light_integral(pair)
    bg_sigma = math.sqrt(o.image_sky / o.image_gain + (o.image_readnoise / o.image_gain) ** 2)
    min_sep = 2 * ipsf.radius + 1
    spots = _star_free_spots(rng_tr, n_tr, integral, bg_sigma, margin, min_sep)
    del integral
    lo, hi = (float(v) for v in transient_snr_range)
    if not (0 < lo <= hi):
        raise InputError(f"transient_snr_range must be 0 < min <= max, got {transient_snr_range!r}.")
    targets = np.geomspace(lo, hi, n_tr)
    kinds = [_KINDS[i % 3] for i in range(n_tr)]
    tr_rows = []
    for i, ((x, y), target, kind) in enumerate(zip(spots, targets, kinds)):
        f = _flux_for_snr(pair, target, x, y)
        s = float(pair.flux_scale_at(x, y))
        if kind == "new":
            host = 0.0
        elif kind == "brighten":
            host = f / s * 10 ** rng_tr.uniform(-0.5, 0.5)
        else:
            n_fade = i // 3
            host = f / s * (1.0 if n_fade % 2 == 0 else 2.0)
        tr_rows.append({"x": float(x), "y": float(y), "kind": kind,
                        "flux": -f if kind == "fade" else f, "host_flux": host})
    return tr_rows


def _listed_transients(pair, tr_list):
    """Explicitly given transients with their host fluxes checked or defaulted."""
    tr_rows = []
    for t in tr_list:
        s = float(pair.flux_scale_at(t["x"], t["y"]))
        host = t["host_flux"]
        if t["kind"] == "new":
            host = 0.0
        elif host is None:
            host = abs(t["flux"]) / s
        else:
            host = float(host)
            if not np.isfinite(host) or host <= 0:
                raise InputError("host_flux of a 'brighten'/'fade' transient must be > 0.")
            if t["kind"] == "fade" and host * s < abs(t["flux"]) * (1 - 1e-9):
                raise InputError(
                    f"a 'fade' transient of {abs(t['flux']):g} ADU needs a host of at least "
                    f"{abs(t['flux']) / s:g} template ADU, got host_flux={host:g}."
                )
        tr_rows.append(dict(t, host_flux=host))
    return tr_rows


def _render_transients(pair, o, tr_rows, sx, sy, tflux):
    """Host stars join the catalogue; transients are rendered as signed extra sources.

    Returns the extended catalogue ``(sx, sy, tflux)`` and the cross indices
    transient -> host star and star -> transient (-1: none); sets ``pair.transients``.
    """
    ipsf, tpsf, shift = pair._image_psf, pair._template_psf, o.shift
    n_cat = o.n_stars
    hosts = [(i, r) for i, r in enumerate(tr_rows) if r["kind"] != "new"]
    if hosts:
        hx = np.array([r["x"] for _, r in hosts])
        hy = np.array([r["y"] for _, r in hosts])
        hf = np.array([r["host_flux"] for _, r in hosts])
        tpsf.render(pair.template_model, hx + shift[0], hy + shift[1], hf)
        ipsf.render(pair.image_model, hx, hy, pair.flux_scale_at(hx, hy) * hf)
        sx, sy, tflux = np.r_[sx, hx], np.r_[sy, hy], np.r_[tflux, hf]
        pair.template_noise = _noise_map(pair.template_model, o.template_gain, o.template_readnoise)
    star_of_tr = np.full(len(tr_rows), -1)
    tr_of_star = np.full(sx.size, -1)
    for j, (i, _) in enumerate(hosts):
        star_of_tr[i] = n_cat + j
        tr_of_star[n_cat + j] = i
    if tr_rows:
        ipsf.render(pair.image_model, [r["x"] for r in tr_rows], [r["y"] for r in tr_rows],
                    [r["flux"] for r in tr_rows])
    pair.transients = Table(
        {
            "id": np.arange(len(tr_rows)),
            "x": np.array([r["x"] for r in tr_rows], float),
            "y": np.array([r["y"] for r in tr_rows], float),
            "flux": np.array([r["flux"] for r in tr_rows], float),
            "kind": np.array([r["kind"] for r in tr_rows], dtype="U8"),
            "host_flux": np.array([r["host_flux"] for r in tr_rows], float),
            "star": star_of_tr,
        }
    )
    return sx, sy, tflux, star_of_tr, tr_of_star
