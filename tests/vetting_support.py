"""Helpers shared by the vetting, preset, batch and ``diffgui run`` tests.

``standin_sfft`` registers, for the duration of a test, a small deterministic
stand-in under the registry name 'sfft' (so presets, which only know the three real
methods, can be saved and validated): it PSF-matches the template with the Gaussian
kernel that the simulator's Gaussian PSFs imply and returns SFFT's outputs. It is a
test double of the *plumbing* (window -> preset -> ``diffgui run``), never of an
algorithm; the tests that judge results also run every real method that is available.
"""

from __future__ import annotations

import contextlib

import numpy as np

SHOTS = "/tmp/diffgui-shots"


def _no_method():
    import pytest

    return [pytest.param("none", marks=pytest.mark.skip(reason="no subtraction method is available yet"))]


#: Parameter list standing in for "every available method" while none is.
NO_METHOD = _no_method()


def _standin(image, template, mask=None, template_mask=None, err=None, template_err=None,
             kernel_shape=(7, 7), verbose=False, cancel=None, **kwargs):
    from scipy.signal import fftconvolve

    from diffgui.app.candidates import gaussian_psf
    from diffgui.engine.errors import check_cancel, make_logger

    log = make_logger(verbose)
    log("stand-in: matching the template")
    check_cancel(cancel)
    img = np.asarray(image, float)
    tmpl = np.asarray(template, float)
    k = gaussian_psf(np.sqrt(3.5 ** 2 - 2.5 ** 2), size=int(kernel_shape[0]) * 2 + 1)
    conv = fftconvolve(tmpl - np.median(tmpl), k, mode="same")
    scale = 1.1
    diff = img - np.median(img) - scale * conv
    noise = np.sqrt(np.clip(img, 1, None) / 2.0 + 25.0)
    log("stand-in: done")
    return [diff, scale * conv, diff / noise, noise, k]


@contextlib.contextmanager
def standin_sfft():
    """Register the stand-in as 'sfft' (restoring the real entry afterwards)."""
    from diffgui.app import methods

    real = methods.get("sfft")
    info = methods.MethodInfo("sfft", "SFFT (test stand-in)", func=_standin,
                              outputs=("diff", "convolved", "scaled", "noise", "kernel"))
    methods.register(info, replace=True)
    try:
        yield info
    finally:
        methods.register(real, replace=True)


def available_methods():
    from diffgui.app import methods

    return [m for m in ("zogy", "sfft", "hotpants") if methods.get(m).available]


def write_pair(tmp_path, sim, names=("sci.fits", "tmpl.fits"), wcs=True):
    """Write a simulated pair as float32 FITS files with a TAN WCS; returns the two paths."""
    from astropy.io import fits

    hdr = fits.Header()
    if wcs:
        ny, nx = sim.image.shape
        hdr.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRPIX1=nx / 2, CRPIX2=ny / 2, CRVAL1=150.0,
                   CRVAL2=2.0, CDELT1=-2.8e-4, CDELT2=2.8e-4, CUNIT1="deg", CUNIT2="deg")
    paths = []
    for name, arr in zip(names, (sim.image, sim.template)):
        p = tmp_path / name
        fits.PrimaryHDU(arr.astype(np.float32), header=hdr).writeto(p)
        paths.append(str(p))
    return paths


def ideal_difference(sim):
    """The difference a perfect method makes on a Gaussian-PSF simulated pair, and its noise.

    The template is convolved with the exact matching Gaussian (science FWHM^2 - template
    FWHM^2), scaled by the true flux scale and both skies removed; the noise map is the
    true per-pixel sigma of that difference (correlated template noise included)."""
    from scipy.signal import fftconvolve

    from diffgui.app.candidates import gaussian_psf

    def fft_convolve(a, k):
        return fftconvolve(a, k, mode="same")

    t = sim.truth
    k = gaussian_psf(np.sqrt(t["image_fwhm"] ** 2 - t["template_fwhm"] ** 2))
    s = t["flux_scale"]
    diff = (sim.image - t["image_sky"]) - s * (fft_convolve(sim.template, k) - t["template_sky"])
    noise = np.sqrt(sim.image_noise ** 2 + s ** 2 * fft_convolve(sim.template_noise ** 2, k * k))
    return diff, noise


def match_truth(table, transients, radius=2.0):
    """``(found, n_false)``: per transient, whether a candidate of the right sign lies within
    ``radius`` px; and the number of candidates matching no transient."""
    from scipy.spatial import cKDTree

    if len(table) == 0:
        return np.zeros(len(transients), bool), 0
    tree = cKDTree(np.column_stack([np.asarray(table["x"]), np.asarray(table["y"])]))
    found = np.zeros(len(transients), bool)
    used = set()
    for i, tr in enumerate(transients):
        for j in tree.query_ball_point([tr["x"], tr["y"]], radius):
            if int(table["sign"][j]) == int(np.sign(tr["flux"])):
                found[i] = True
                used.add(j)
    near_any = set()
    for tr in transients:
        near_any.update(tree.query_ball_point([tr["x"], tr["y"]], 2 * radius))
    return found, len(table) - len(near_any | used)
