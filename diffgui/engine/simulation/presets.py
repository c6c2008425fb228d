"""Ready-made pairs: the demo pair and the stdpipe peer-measurement reference pair."""

from __future__ import annotations

import math

import numpy as np

from diffgui.engine.simulation.generate import simulate_pair
from diffgui.engine.simulation.transients import _star_free_spots
from diffgui.engine.simulation.pair import _star_light_integral


def make_demo_pair(seed=1, shape=(512, 512), n_transients=10):
    """The pair shown by ``diffgui --demo``.

    Moffat (beta 3) PSFs, science FWHM 3.5 -> template 2.5 with a 10 % FWHM gradient,
    a 2 % flux-scale gradient, a science sky gradient and ``n_transients`` transients of
    all three kinds with ideal S/N from 8 to 80.

    Parameters
    ----------
    seed : int
        Random seed.
    shape : (int, int)
        Image shape.
    n_transients : int
        Number of transients.

    Returns
    -------
    SimulatedPair
    """
    h, w = shape
    return simulate_pair(
        shape=shape,
        n_stars=int(round(400 * h * w / 512 ** 2)),
        star_flux_range=(10 ** 2.5, 10 ** 5),
        flux_slope=0.5,
        psf="moffat",
        moffat_beta=3.0,
        image_fwhm=3.5,
        template_fwhm=2.5,
        image_fwhm_gradient=0.1,
        template_fwhm_gradient=(0.05, -0.05),
        flux_scale=1.1,
        flux_scale_gradient=0.02,
        sky_gradient={"image": (30.0, 15.0), "template": (0.0, 5.0)},
        transients=n_transients,
        transient_snr_range=(8.0, 80.0),
        seed=seed,
    )


def make_reference_pair(size=1024, seed=0, n_transients=8):
    """The stdpipe peer-measurement pair (stdpipe-reference.md §6) at ``size`` x ``size``.

    Gaussian PSFs 3.5 / 2.5, 1500 stars per 1024**2 with log-uniform template flux
    10**2.5 - 10**4.7, skies 1000 (+20 ADU across x, +10 across y) and 500, gains 2 / 10,
    read noise 10 / 3, flux x1.1, and ``n_transients`` 'new' transients of
    300 - 20000 ADU (log-spaced; 1000 and 5000 ADU included for 8) in star-free spots.
    The quality tables of §6 quote S/N at 1000 and 5000 ADU.
    """
    size = int(size)
    base = simulate_pair(shape=(size, size), sky_gradient=(20.0, 10.0), seed=seed)
    fluxes = np.array([300, 1000, 2000, 5000, 1500, 3000, 10000, 20000], float)
    if n_transients != 8:
        fluxes = np.geomspace(300, 20000, n_transients)
    # Star-free spots on the base pair, then rebuild with the same seed and the
    # explicit transients: the catalogue and noise streams are unchanged.
    r = base._image_psf.radius
    spots = _star_free_spots(np.random.default_rng([seed, 1]), len(fluxes), _star_light_integral(base),
                             math.sqrt(1000 / 2 + 25), max(10, r + 2), 2 * r + 1)
    return simulate_pair(
        shape=(size, size), sky_gradient=(20.0, 10.0), seed=seed,
        transients=[{"x": x, "y": y, "flux": f, "kind": "new"} for (x, y), f in zip(spots, fluxes)],
    )
