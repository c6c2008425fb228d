"""Denoising of a stacked PSF model: a fitted radial wing profile plus only the
significant residual structure."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from diffgui.engine.psf.grid import _normalise_and_centre

#: Weight of the Wiener shrinkage applied to the spatial-variation terms inside
#: the core (1 = full shrinkage, 0 = none): a compromise between noise and bias.
VARIATION_SHRINK = 0.5
#: Radius (in FWHM) where the wing model starts replacing noisy pixels.
WING_START = 1.0


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

