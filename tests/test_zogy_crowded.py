"""ZOGY's building blocks for crowded real fields: the kernel-sum flux scale, the mask of
pixels sharper than the PSF, and the confusion noise given to PSF estimation."""

import numpy as np
import pytest

from diffgui.engine.common.noise import Background
from diffgui.engine.zogy.cosmics import sharp_pixels
from diffgui.engine.zogy.kernel_scale import kernel_flux_scale, kernel_half_size, wing_radius


def _stars(shape, fwhm, xy, flux, shift=(0.0, 0.0)):
    s = fwhm / 2.3548
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros(shape)
    for (x, y), f in zip(xy, flux):
        img += f / (2 * np.pi * s * s) * np.exp(-((xx - x - shift[0]) ** 2 + (yy - y - shift[1]) ** 2) / (2 * s * s))
    return img


def test_kernel_sum_gives_the_flux_ratio_whatever_the_psfs():
    rng = np.random.default_rng(3)
    shape = (160, 160)
    n = 300  # crowded: a star every ~9 x 9 pixels
    xy = rng.uniform(8, 152, (n, 2))
    flux = 10 ** rng.uniform(2.5, 4.5, n)
    N = _stars(shape, 3.0, xy, flux)
    R = _stars(shape, 4.2, xy, 1.37 * flux, shift=(0.3, -0.2))
    en, er = np.full(shape, 5.0), np.full(shape, 6.0)
    N += rng.normal(0, 5.0, shape) + 12.0  # a background difference as well
    R += rng.normal(0, 6.0, shape)
    bad = np.zeros(shape, bool)
    bad[40:43, 50:53] = True
    half = kernel_half_size(3.0, 4.2)
    assert half == 6
    # The sharper image (the science here) is convolved; the other way round the
    # kernel would have to deconvolve.
    fr = kernel_flux_scale(N, R, bad, en, er, None, half, start=1.3, convolve="science")
    assert fr == pytest.approx(1.37, rel=0.003)
    fr = kernel_flux_scale(R, N, bad, er, en, None, half, start=1 / 1.3, convolve="template")
    assert fr == pytest.approx(1 / 1.37, rel=0.003)
    # Too few good pixels: no estimate (run_zogy falls back to its own fit).
    assert kernel_flux_scale(N[:20, :20], R[:20, :20], bad[:20, :20], en[:20, :20], er[:20, :20],
                             None, half) is None


def _moffat_stars(shape, fwhm, beta, xy, flux, shift=(0.0, 0.0), reach=40):
    a = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    yy, xx = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    img = np.zeros((shape[0] + 2 * reach, shape[1] + 2 * reach))
    for (x, y), f in zip(xy, flux):
        ix, iy = int(round(x)), int(round(y))
        r2 = (xx - (x - ix) - shift[0]) ** 2 + (yy - (y - iy) - shift[1]) ** 2
        img[iy:iy + 2 * reach + 1, ix:ix + 2 * reach + 1] += f * (beta - 1) / (np.pi * a * a) * (1 + r2 / (a * a)) ** -beta
    return img[reach:-reach, reach:-reach]


def test_kernel_wings_and_variable_stars():
    """The broader PSF's Moffat wings reach beyond the pixel kernel: without the wing
    rings the kernel sum missed 2-3 % of the flux ratio; variable stars are left out."""
    rng = np.random.default_rng(4)
    shape = (200, 200)
    n = 500
    xy = rng.uniform(0, 199.4, (n, 2))
    flux = 10 ** rng.uniform(2.5, 4.5, n)
    fn, fr = 3.0, 4.5
    R = _moffat_stars(shape, fr, 2.5, xy, 1.37 * flux, shift=(0.3, -0.2)) + rng.normal(0, 6.0, shape)
    nflux = flux.copy()
    nflux[:12] *= rng.uniform(1.5, 3.0, 12)  # variable stars, brighter in the science
    N = _moffat_stars(shape, fn, 2.5, xy, nflux) + rng.normal(0, 5.0, shape) + 12.0
    en, er = np.full(shape, 5.0), np.full(shape, 6.0)
    bad = np.zeros(shape, bool)
    half = kernel_half_size(fn, fr)
    wing = wing_radius(fn, fr, half)
    assert half == 6 and wing == 23
    no_wings = kernel_flux_scale(N, R, bad, en, er, None, half, 1.3, convolve="science")
    assert no_wings < 1.37 * 0.985
    fr_fit = kernel_flux_scale(N, R, bad, en, er, None, half, 1.3, convolve="science", wing=wing)
    assert fr_fit == pytest.approx(1.37, rel=0.004)
    # the same the other way round (science broader, template convolved)
    fr_fit = kernel_flux_scale(R, N, bad, er, en, None, half, 1 / 1.3, convolve="template", wing=wing)
    assert fr_fit == pytest.approx(1 / 1.37, rel=0.004)
    assert wing_radius(4.0, 4.0, 5) == 20 and wing_radius(0.6, 0.8, 3) == 0  # no room: no wings


def test_sharp_pixels_flags_cosmic_rays_not_stars():
    rng = np.random.default_rng(5)
    shape = (120, 120)
    xy = [(30.3, 40.6), (80.0, 80.0), (60.5, 20.5)]
    img = _stars(shape, 3.5, xy, [2e5, 5e4, 2e3]) + rng.normal(0, 10.0, shape)
    err = np.sqrt(100.0 + np.maximum(img, 0) / 2.0)
    img[100, 100] += 3000.0  # single-pixel hit
    img[10, 60] += 2500.0  # two-pixel track
    img[11, 60] += 1800.0
    img[81, 80] += 4000.0  # a hit on a star's slope
    bad = np.zeros(shape, bool)
    m = sharp_pixels(img, err, bad, 3.5)
    assert m[100, 100] and m[10, 60] and m[11, 60] and m[81, 80]
    assert not m[40, 30] and not m[20, 60] and not m[41, 30]
    assert m.sum() <= 4 * 9  # grown by one pixel around each hit, nothing else
    assert not sharp_pixels(img, err, bad, 1.2).any()  # undersampled: stars may be spikes


def test_psf_noise_adds_only_the_confusion_excess():
    from diffgui.engine.zogy.run import _psf_noise

    err = np.full((4, 4), 20.0)
    rms = np.full((4, 4), 20.0)
    rms[0, 0] = 100.0
    bg = Background(back=np.zeros((4, 4)), rms=rms, globalback=0.0, globalrms=20.0)
    out = _psf_noise(err, bg, 20.0)
    assert out[1, 1] == pytest.approx(20.0)
    assert out[0, 0] == pytest.approx(100.0)
